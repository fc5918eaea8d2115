//! Label selectors (equality- and set-based, as `kubectl get -l` writes them) and field selectors
//! (`--field-selector`), parsed from their string forms and matched against objects.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also matches objects without the key.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

/// Why a selector string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct ParseError(pub String);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn check_key(key: &str, whole: &str) -> Result<String, ParseError> {
    let key = key.trim();
    if key.is_empty() || crate::validation::qualified_name(key).is_some() {
        return Err(ParseError(format!(
            "invalid label key \"{key}\" in \"{whole}\""
        )));
    }
    Ok(key.to_string())
}

fn check_value(v: &str, whole: &str) -> Result<String, ParseError> {
    let v = v.trim();
    if crate::validation::label_value(v).is_some() {
        return Err(ParseError(format!(
            "invalid label value: \"{v}\" in \"{whole}\""
        )));
    }
    Ok(v.to_string())
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ParseError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ParseError(format!("expected a parenthesised set in \"{whole}\"")))?;
    inner.split(',').map(|v| check_value(v, whole)).collect()
}

impl LabelSelector {
    /// Parses the string form (`a=b,c!=d,e in (f,g),!h`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(ParseError(format!("found empty requirement in \"{s}\"")));
            }
            let req = if let Some(key) = p.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(key, s)?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotIn(check_key(k, s)?, vec![check_value(v, s)?])
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::In(check_key(k, s)?, vec![check_value(v, s)?])
            } else if let Some(idx) = p.find(" notin ") {
                Requirement::NotIn(check_key(&p[..idx], s)?, parse_set(&p[idx + 7..], s)?)
            } else if let Some(idx) = p.find(" in ") {
                Requirement::In(check_key(&p[..idx], s)?, parse_set(&p[idx + 4..], s)?)
            } else if p.contains(['(', ')', ' ', '<', '>']) {
                return Err(ParseError(format!("\"{p}\" in \"{s}\"")));
            } else {
                Requirement::Exists(check_key(p, s)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` JSON value (`matchLabels` and
    /// `matchExpressions`). An absent selector selects nothing (`None`).
    pub fn from_json(v: &Value) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        for (k, val) in crate::meta::string_map(v.get("matchLabels")) {
            reqs.push(Requirement::In(k.to_string(), vec![val.to_string()]));
        }
        for e in v
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let req = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                other => {
                    return Err(ParseError(format!(
                        "{:?} is not a valid label selector operator",
                        other.unwrap_or("")
                    )));
                }
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` (a lookup from key to value) satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// Whether the object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }
}

/// One field selector term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// The dotted field path, e.g. `metadata.name`.
    pub field: String,
    /// The value compared against.
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parses `a=b,c!=d` (also `==`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, false)
            } else {
                return Err(ParseError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            terms.push(FieldTerm {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(Self(terms))
    }

    /// Whether the object satisfies every term. Absent fields compare as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| {
            let actual = match crate::meta::lookup(obj, &t.field) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == t.value) != t.negated
        })
    }

    /// Whether the fields (a lookup from field path to value) satisfy every term. Absent
    /// fields compare as "".
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0
            .iter()
            .all(|t| (get(&t.field).unwrap_or("") == t.value) != t.negated)
    }

    /// The value a term requires for `field` with `=`, if any (used to narrow a list).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn equality_and_sets() {
        let o = obj(json!({"color": "red", "tier": "web"}));
        let m = |s: &str| LabelSelector::parse(s).expect(s).matches(&o);
        assert!(m("color=red"));
        assert!(m("color==red,tier=web"));
        assert!(!m("color!=red"));
        assert!(m("color in (red,blue)"));
        assert!(!m("color notin (red)"));
        assert!(m("color notin (blue)"));
        assert!(
            m("missing notin (blue)"),
            "notin matches objects without the key"
        );
        assert!(m("color,!missing"));
        assert!(!m("color,color notin (red)"));
        assert!(m(""));
    }

    #[test]
    fn bad_selectors_are_errors() {
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse(",").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn from_label_selector_json() {
        let s = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
        }))
        .expect("valid");
        assert!(s.matches(&obj(json!({"app": "web", "tier": "b"}))));
        assert!(!s.matches(&obj(json!({"app": "web"}))));
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        let f = |s: &str| FieldSelector::parse(s).expect(s).matches(&o);
        assert!(f("metadata.name=x"));
        assert!(f("spec.nodeName=n1,metadata.name!=y"));
        assert!(!f("status.phase=Running"));
        assert!(f("status.phase!=Running"));
    }
}
