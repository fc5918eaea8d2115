//! Address management for the pods of one node: each pod gets the lowest free address of the
//! node's pod CIDR (the first is the bridge's gateway), recorded as a file named after the
//! address and holding the pod's uid, so that allocations survive agent restarts.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected e.g. 10.42.0.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix {prefix:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// The `n`th address of the network.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The gateway: the first usable address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// How many addresses the network has, network and broadcast included.
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }
}

/// The allocations of one node.
pub struct Ipam {
    dir: PathBuf,
    cidr: Cidr,
}

impl Ipam {
    /// Allocations kept in `dir` for `cidr`.
    pub fn open(dir: &Path, cidr: Cidr) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cidr,
        })
    }

    /// The address of `owner`, allocated now if it has none.
    pub fn allocate(&self, owner: &str) -> io::Result<Ipv4Addr> {
        if let Some(ip) = self.lookup(owner)? {
            return Ok(ip);
        }
        for n in 2..self.cidr.size() - 1 {
            let ip = self.cidr.nth(n);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(ip.to_string()))
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "no free address left in {}",
            self.cidr
        )))
    }

    /// The address `owner` holds.
    pub fn lookup(&self, owner: &str) -> io::Result<Option<Ipv4Addr>> {
        for entry in fs::read_dir(&self.dir)?.flatten() {
            if fs::read_to_string(entry.path()).is_ok_and(|o| o == owner)
                && let Ok(ip) = entry.file_name().to_string_lossy().parse()
            {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// Gives back the address of `owner`.
    pub fn release(&self, owner: &str) -> io::Result<()> {
        if let Some(ip) = self.lookup(owner)? {
            fs::remove_file(self.dir.join(ip.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_normalize() {
        let c: Cidr = "10.42.0.7/24".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.42.0.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert!("10.42.0.0".parse::<Cidr>().is_err());
        assert!("10.42.0.0/31".parse::<Cidr>().is_err());
        assert!("nope/24".parse::<Cidr>().is_err());
    }

    #[test]
    fn allocations_are_stable_unique_and_released() {
        let dir = tempfile::tempdir().expect("dir");
        let ipam = Ipam::open(dir.path(), "10.0.0.0/29".parse().expect("cidr")).expect("ipam");
        let a = ipam.allocate("a").expect("a");
        let b = ipam.allocate("b").expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(ipam.allocate("a").expect("again"), a);
        for o in ["c", "d", "e", "f"] {
            let _ = ipam.allocate(o);
        }
        assert!(ipam.allocate("g").is_err(), "a /29 has 5 pod addresses");
        ipam.release("a").expect("release");
        assert_eq!(ipam.allocate("g").expect("reuse"), a);
    }
}
