//! The value of `--peer` (and of each `;`-separated entry of `MESHD_PEERS`): a `[[peers]]`
//! table on one line, `name=NAME,address=ADDR,subnet=CIDR[,public-key=KEY]`.
//!
//! A parser of its own because it is the one flag whose value has structure, and an operator
//! typing a peer into a unit file needs the error to point at the part that is wrong, which
//! clap's "invalid value" alone would not.

use super::PeerConfig;

/// One `--peer`: `name=NAME,address=ADDR,subnet=CIDR[,public-key=KEY]`. Only the syntax is
/// checked here, and each error quotes the part it is about; what a value means (a valid key,
/// a subnet inside `cluster-cidr`, no duplicates) is
/// [`Config::validate`](super::Config::validate)'s, as for the file.
pub fn parse(text: &str) -> Result<PeerConfig, String> {
    const FORM: &str = "name=NAME,address=ADDR,subnet=CIDR[,public-key=KEY]";
    if text.trim().is_empty() {
        return Err(format!("an empty peer; expected {FORM}"));
    }
    let (mut name, mut address, mut subnet, mut public_key) = (None, None, None, None);
    for part in text.split(',').map(str::trim) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("`{part}` is not key=value; expected {FORM}"));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "name" => once(&mut name, key, value.to_string())?,
            "address" => {
                let v = value
                    .parse()
                    .map_err(|e| format!("`{part}`: `{value}` is not an IP address ({e})"))?;
                once(&mut address, key, v)?
            }
            "subnet" => {
                let v = value
                    .parse()
                    .map_err(|e| format!("`{part}`: `{value}` is not an IPv4 subnet ({e})"))?;
                once(&mut subnet, key, v)?
            }
            "public-key" => once(&mut public_key, key, value.to_string())?,
            _ => return Err(format!("`{part}`: unknown key `{key}`; expected {FORM}")),
        }
    }
    let missing = |key: &str| format!("`{}` has no `{key}=`; expected {FORM}", text.trim());
    Ok(PeerConfig {
        name: name.ok_or_else(|| missing("name"))?,
        address: address.ok_or_else(|| missing("address"))?,
        subnet: subnet.ok_or_else(|| missing("subnet"))?,
        public_key,
    })
}

fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
    match slot.replace(value) {
        Some(_) => Err(format!("`{key}` is given twice")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn peer_flags_parse_or_say_which_part_is_wrong() {
        let p = parse(" name=b, address=198.18.0.2,subnet=10.244.2.0/24,public-key=U1o8m1yUdU0cGWJAPZ5ch6xvnQuAoMTqlbQDTujHiH4=").unwrap();
        assert_eq!(p.name, "b");
        assert_eq!(p.address.to_string(), "198.18.0.2");
        assert_eq!(p.subnet.to_string(), "10.244.2.0/24");
        assert!(p.key().is_some(), "the key's `=` padding is kept");
        let cases = [
            ("", "empty"),
            ("name=b,address=198.18.0.2", "no `subnet=`"),
            ("address=198.18.0.2,subnet=10.244.2.0/24", "no `name=`"),
            (
                "name=b,address=nowhere,subnet=10.244.2.0/24",
                "`address=nowhere`",
            ),
            (
                "name=b,address=198.18.0.2,subnet=10.244.2.0/33",
                "`subnet=10.244.2.0/33`",
            ),
            (
                "name=b,address=198.18.0.2,subnet=2001:db8::/64",
                "not an IPv4 subnet",
            ),
            (
                "name=b,port=1,address=198.18.0.2,subnet=10.244.2.0/24",
                "unknown key `port`",
            ),
            (
                "name=b,name=c,address=198.18.0.2,subnet=10.244.2.0/24",
                "`name` is given twice",
            ),
            (
                "name=b,198.18.0.2,subnet=10.244.2.0/24",
                "`198.18.0.2` is not key=value",
            ),
        ];
        for (text, says) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
