//! Org and grid codes: the 12-digit NBS division code and the 15-digit grid code, parsed once.
//!
//! The code *is* the tier path: district = code[0..6], street = code[0..9], community = code[0..12],
//! grid = community + 3 digits.

use std::fmt;
use std::str::FromStr;

/// Why a code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("expected {expected} digits, got {got:?}")]
    Shape { expected: &'static str, got: String },
    #[error("{0:?} is not a district, street or community code")]
    NotAScope(String),
}

/// The level of an org in the administrative tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrgLevel {
    City,
    /// 区 (县)
    District,
    /// 街道 / 镇
    Street,
    /// 社区 (居委会) / 村 (村委会)
    Community,
}

impl OrgLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgLevel::City => "city",
            OrgLevel::District => "district",
            OrgLevel::Street => "street",
            OrgLevel::Community => "community",
        }
    }
}

impl FromStr for OrgLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "city" => Ok(OrgLevel::City),
            "district" => Ok(OrgLevel::District),
            "street" => Ok(OrgLevel::Street),
            "community" => Ok(OrgLevel::Community),
            other => Err(format!("unknown org level {other:?}")),
        }
    }
}

fn all_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

/// A 12-digit statistical division code (统计用区划代码).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgCode([u8; 12]);

impl OrgCode {
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII digits by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The level, read off the trailing zeros.
    pub fn level(&self) -> OrgLevel {
        let s = self.as_str();
        if &s[4..] == "00000000" {
            OrgLevel::City
        } else if &s[6..] == "000000" {
            OrgLevel::District
        } else if &s[9..] == "000" {
            OrgLevel::Street
        } else {
            OrgLevel::Community
        }
    }

    /// The significant prefix: 6 digits for a district, 9 for a street, 12 for a community.
    pub fn prefix(&self) -> &str {
        let s = self.as_str();
        match self.level() {
            OrgLevel::City => &s[..4],
            OrgLevel::District => &s[..6],
            OrgLevel::Street => &s[..9],
            OrgLevel::Community => s,
        }
    }

    /// The org one level up (a community's street, a street's district, a district's city).
    pub fn parent(&self) -> Option<OrgCode> {
        let s = self.as_str();
        let parent = match self.level() {
            OrgLevel::City => return None,
            OrgLevel::District => format!("{}00000000", &s[..4]),
            OrgLevel::Street => format!("{}000000", &s[..6]),
            OrgLevel::Community => format!("{}000", &s[..9]),
        };
        parent.parse().ok()
    }

    pub fn district(&self) -> OrgCode {
        Self::padded(&self.as_str()[..6])
    }

    pub fn street(&self) -> OrgCode {
        Self::padded(&self.as_str()[..9])
    }

    fn padded(prefix: &str) -> OrgCode {
        let mut bytes = [b'0'; 12];
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        OrgCode(bytes)
    }
}

impl FromStr for OrgCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !all_digits(s, 12) {
            return Err(CodeError::Shape {
                expected: "12",
                got: s.to_owned(),
            });
        }
        let mut bytes = [0u8; 12];
        bytes.copy_from_slice(s.as_bytes());
        Ok(OrgCode(bytes))
    }
}

impl fmt::Display for OrgCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A 15-digit grid code (网格编码): community code + 3-digit sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GridCode([u8; 15]);

impl GridCode {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn community(&self) -> OrgCode {
        let mut bytes = [0u8; 12];
        bytes.copy_from_slice(&self.0[..12]);
        OrgCode(bytes)
    }

    pub fn street(&self) -> OrgCode {
        self.community().street()
    }

    pub fn district(&self) -> OrgCode {
        self.community().district()
    }

    /// The NATS subject tokens of the grid: `350205.002.006.001`.
    pub fn subject_path(&self) -> String {
        let s = self.as_str();
        format!("{}.{}.{}.{}", &s[..6], &s[6..9], &s[9..12], &s[12..])
    }
}

impl FromStr for GridCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !all_digits(s, 15) || s[..12].ends_with("000") {
            return Err(CodeError::Shape {
                expected: "15 (a community code + 3)",
                got: s.to_owned(),
            });
        }
        let mut bytes = [0u8; 15];
        bytes.copy_from_slice(s.as_bytes());
        Ok(GridCode(bytes))
    }
}

impl fmt::Display for GridCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a service instance serves: a district, a street or a community, named by its org code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(OrgCode);

impl Scope {
    pub fn org(&self) -> OrgCode {
        self.0
    }

    pub fn level(&self) -> OrgLevel {
        self.0.level()
    }

    /// The code prefix every grid and org of the scope starts with.
    pub fn prefix(&self) -> &str {
        self.0.prefix()
    }

    pub fn contains_grid(&self, grid: &GridCode) -> bool {
        grid.as_str().starts_with(self.prefix())
    }

    pub fn contains_org(&self, org: &OrgCode) -> bool {
        org.as_str().starts_with(self.prefix())
    }

    /// The NATS subject tokens of the scope: `350205`, `350205.002` or `350205.002.006`.
    pub fn subject_path(&self) -> String {
        let p = self.prefix();
        p.as_bytes()
            .chunks(3)
            .enumerate()
            .fold(String::new(), |mut acc, (i, chunk)| {
                // The district prefix is 6 digits: the first two chunks form one token.
                if i > 1 {
                    acc.push('.');
                }
                acc.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                acc
            })
    }
}

impl FromStr for Scope {
    type Err = CodeError;
    /// Accepts a full 12-digit code or its significant prefix (6, 9 or 12 digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let padded = match s.len() {
            6 | 9 if s.bytes().all(|b| b.is_ascii_digit()) => format!("{s:0<12}"),
            _ => s.to_owned(),
        };
        let code: OrgCode = padded.parse()?;
        match code.level() {
            OrgLevel::City => Err(CodeError::NotAScope(s.to_owned())),
            _ => Ok(Scope(code)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_off_the_trailing_zeros() {
        let cases = [
            ("350200000000", OrgLevel::City),
            ("350205000000", OrgLevel::District),
            ("350205002000", OrgLevel::Street),
            ("350205002006", OrgLevel::Community),
            ("350205002214", OrgLevel::Community),
        ];
        for (code, level) in cases {
            assert_eq!(code.parse::<OrgCode>().unwrap().level(), level, "{code}");
        }
    }

    #[test]
    fn parents_walk_up_the_tree() {
        let community: OrgCode = "350205002006".parse().unwrap();
        let street = community.parent().unwrap();
        assert_eq!(street.as_str(), "350205002000");
        let district = street.parent().unwrap();
        assert_eq!(district.as_str(), "350205000000");
        assert_eq!(district.parent().unwrap().as_str(), "350200000000");
        assert_eq!(community.district(), district);
        assert_eq!(community.street(), street);
    }

    #[test]
    fn malformed_codes_are_refused() {
        for bad in [
            "",
            "35020500200",
            "3502050020061",
            "35020500200a",
            "３５０２０５００２００６",
        ] {
            assert!(bad.parse::<OrgCode>().is_err(), "{bad:?}");
        }
        assert!(
            "350205002000001".parse::<GridCode>().is_err(),
            "a street is not a community"
        );
        assert!("35020500200600".parse::<GridCode>().is_err());
    }

    #[test]
    fn grid_codes_name_their_tier_path() {
        let grid: GridCode = "350205002006001".parse().unwrap();
        assert_eq!(grid.community().as_str(), "350205002006");
        assert_eq!(grid.street().as_str(), "350205002000");
        assert_eq!(grid.district().as_str(), "350205000000");
        assert_eq!(grid.subject_path(), "350205.002.006.001");
    }

    #[test]
    fn scopes_accept_prefixes_and_contain_their_grids() {
        let district: Scope = "350205".parse().unwrap();
        let street: Scope = "350205002".parse().unwrap();
        let community: Scope = "350205002006".parse().unwrap();
        assert_eq!(district.subject_path(), "350205");
        assert_eq!(street.subject_path(), "350205.002");
        assert_eq!(community.subject_path(), "350205.002.006");
        let grid: GridCode = "350205002006001".parse().unwrap();
        let elsewhere: GridCode = "350203001001001".parse().unwrap();
        for scope in [district, street, community] {
            assert!(scope.contains_grid(&grid));
            assert!(!scope.contains_grid(&elsewhere));
        }
        assert!(
            "350200000000".parse::<Scope>().is_err(),
            "the city is not a tier scope"
        );
        assert_eq!("350205000000".parse::<Scope>().unwrap(), district);
    }
}
