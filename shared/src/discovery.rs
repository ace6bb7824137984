//! What vgas nodes say about themselves over mDNS (`NetworkDiscovery`), as plain data: the
//! service type, the TXT properties and the rules a worker applies before it joins. The
//! sockets live in the master and worker crates; everything here is pure so it is tested
//! without a network.
//!
//! An advert is only a hint. A worker joins only a master of its own cluster and protocol
//! version, and the NATS server still demands the worker's credentials.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The DNS-SD service type every vgas node announces (from the seeds).
pub const SERVICE_TYPE: &str = "_vgas._tcp.local.";

/// Bumped when two versions of vgas can no longer work together over NATS.
pub const PROTOCOL_VERSION: u32 = 1;

/// The cluster name nodes use when none is configured.
pub const DEFAULT_CLUSTER: &str = "vgas";

/// A node's role in the seeds' words: the master, or a worker (`Slave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMode {
    Master,
    Slave,
}

impl ClientMode {
    fn as_str(self) -> &'static str {
        match self {
            ClientMode::Master => "master",
            ClientMode::Slave => "slave",
        }
    }
}

/// One node's advert, decoded from or encoded to TXT properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub mode: ClientMode,
    pub node_id: String,
    pub cluster: String,
    pub proto: u32,
    /// Master only: NATS URLs to use. A URL whose host is `{host}` means "the address this
    /// advert came from", so one advert serves every interface it is sent on.
    pub nats_urls: Vec<String>,
    /// Master only: the nats-server monitoring port, when known.
    pub http_port: Option<u16>,
    /// Worker only: a short capability summary (`slots=4 caps=gcc,make`).
    pub summary: String,
    /// Master only, when its server takes TLS: the swarm CA's fingerprint
    /// ([`ca_fingerprint`]), so a worker sees at once whether its credentials trust this
    /// server. Public, like the certificate it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// `sha256:<hex>` of the first certificate's DER bytes in `pem`; `None` when there is none.
pub fn ca_fingerprint(pem: &str) -> Option<String> {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    (!der.is_empty()).then(|| format!("sha256:{}", hex::encode(Sha256::digest(der))))
}

/// The placeholder for "the address the advert came from" in advertised URLs.
pub const HOST_PLACEHOLDER: &str = "{host}";

impl Advert {
    pub fn to_properties(&self) -> HashMap<String, String> {
        let mut p = HashMap::new();
        p.insert("mode".into(), self.mode.as_str().into());
        p.insert("node".into(), self.node_id.clone());
        p.insert("cluster".into(), self.cluster.clone());
        p.insert("proto".into(), self.proto.to_string());
        if !self.nats_urls.is_empty() {
            p.insert("nats".into(), self.nats_urls.join(","));
        }
        if let Some(port) = self.http_port {
            p.insert("http".into(), port.to_string());
        }
        if !self.summary.is_empty() {
            p.insert("summary".into(), self.summary.clone());
        }
        if let Some(ca) = &self.ca {
            p.insert("ca".into(), ca.clone());
        }
        p
    }

    /// Reads an advert; `None` for anything that is not a vgas advert.
    pub fn from_properties(p: &HashMap<String, String>) -> Option<Advert> {
        let mode = match p.get("mode")?.as_str() {
            "master" => ClientMode::Master,
            "slave" => ClientMode::Slave,
            _ => return None,
        };
        Some(Advert {
            mode,
            node_id: p.get("node")?.clone(),
            cluster: p.get("cluster")?.clone(),
            proto: p.get("proto")?.parse().ok()?,
            nats_urls: p
                .get("nats")
                .map(|s| {
                    s.split(',')
                        .filter(|u| !u.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            http_port: p.get("http").and_then(|s| s.parse().ok()),
            summary: p.get("summary").cloned().unwrap_or_default(),
            ca: p.get("ca").cloned(),
        })
    }

    /// The NATS URLs of a master advert seen from `addrs`, placeholders filled in, IPv4
    /// first (the order a worker tries them).
    pub fn urls_from(&self, addrs: &[IpAddr]) -> Vec<String> {
        let mut addrs = addrs.to_vec();
        addrs.sort_by_key(|a| (a.is_ipv6(), *a));
        let mut out = Vec::new();
        for url in &self.nats_urls {
            if url.contains(HOST_PLACEHOLDER) {
                for a in &addrs {
                    let host = match a {
                        IpAddr::V4(v4) => v4.to_string(),
                        IpAddr::V6(v6) => format!("[{v6}]"),
                    };
                    out.push(url.replace(HOST_PLACEHOLDER, &host));
                }
            } else {
                out.push(url.clone());
            }
        }
        out
    }

    /// Why a worker of `cluster`, whose credentials trust the CA with fingerprint `ca` (none:
    /// no TLS), must not join the master behind this advert; `None` when it may.
    pub fn refusal(&self, cluster: &str, ca: Option<&str>) -> Option<JoinRefusal> {
        if self.mode != ClientMode::Master {
            Some(JoinRefusal::NotAMaster)
        } else if self.cluster != cluster {
            Some(JoinRefusal::OtherCluster)
        } else if self.proto != PROTOCOL_VERSION {
            Some(JoinRefusal::OtherProtocol)
        } else if self.ca.as_deref() != ca {
            Some(JoinRefusal::OtherTls)
        } else {
            None
        }
    }
}

impl Advert {
    /// Why a worker with this advert would not be part of a swarm of `cluster`.
    pub fn refusal_as_worker(&self, cluster: &str) -> Option<JoinRefusal> {
        if self.cluster != cluster {
            Some(JoinRefusal::OtherCluster)
        } else if self.proto != PROTOCOL_VERSION {
            Some(JoinRefusal::OtherProtocol)
        } else {
            None
        }
    }
}

/// Why a node seen on the LAN is not part of this swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRefusal {
    NotAMaster,
    OtherCluster,
    OtherProtocol,
    /// Same cluster and version, but it has not joined: most likely it cannot connect.
    NotConnected,
    /// Its server's TLS is not what these credentials trust: another CA, or TLS on one side
    /// only.
    OtherTls,
}

impl JoinRefusal {
    pub fn describe(self) -> &'static str {
        match self {
            JoinRefusal::NotAMaster => "not a master",
            JoinRefusal::OtherCluster => "other cluster",
            JoinRefusal::OtherProtocol => "other protocol version",
            JoinRefusal::NotConnected => "cannot connect (advertised, not joined)",
            JoinRefusal::OtherTls => "other TLS CA (or TLS on one side only)",
        }
    }
}

/// A node seen by mDNS, as `vgas discover` and `SwarmPulse` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenNode {
    pub advert: Advert,
    /// Always written as strings: a binary `IpAddr` would not survive the untagged `Reply`
    /// envelope, which reads MessagePack through serde's human-readable buffer.
    #[serde(with = "ip_strings")]
    pub addresses: Vec<IpAddr>,
    /// For workers in `SwarmPulse`: why it is not live here; `None` when it is.
    #[serde(default)]
    pub not_joined: Option<JoinRefusal>,
}

mod ip_strings {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addrs: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(|a| a.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(cluster: &str, proto: u32) -> Advert {
        Advert {
            mode: ClientMode::Master,
            node_id: "m1".into(),
            cluster: cluster.into(),
            proto,
            nats_urls: vec!["nats://{host}:4222".into()],
            http_port: Some(8222),
            summary: String::new(),
            ca: None,
        }
    }

    #[test]
    fn properties_round_trip() {
        let a = master("lab", 1);
        assert_eq!(Advert::from_properties(&a.to_properties()), Some(a));
        let mut junk = HashMap::new();
        junk.insert("mode".to_string(), "printer".to_string());
        assert_eq!(Advert::from_properties(&junk), None);
    }

    #[test]
    fn placeholders_become_each_address_ipv4_first() {
        let a = master("lab", 1);
        let addrs: Vec<IpAddr> = vec!["fe80::1".parse().unwrap(), "10.1.0.2".parse().unwrap()];
        assert_eq!(
            a.urls_from(&addrs),
            ["nats://10.1.0.2:4222", "nats://[fe80::1]:4222"]
        );
    }

    #[test]
    fn join_rules() {
        assert_eq!(master("lab", PROTOCOL_VERSION).refusal("lab", None), None);
        let tls = Advert {
            ca: Some("sha256:aa".into()),
            ..master("lab", PROTOCOL_VERSION)
        };
        assert_eq!(tls.refusal("lab", Some("sha256:aa")), None);
        assert_eq!(
            tls.refusal("lab", Some("sha256:bb")),
            Some(JoinRefusal::OtherTls)
        );
        assert_eq!(tls.refusal("lab", None), Some(JoinRefusal::OtherTls));
        assert_eq!(
            master("lab", PROTOCOL_VERSION).refusal("lab", Some("sha256:aa")),
            Some(JoinRefusal::OtherTls)
        );
        assert_eq!(Advert::from_properties(&tls.to_properties()), Some(tls));
        assert_eq!(
            master("other", PROTOCOL_VERSION).refusal("lab", None),
            Some(JoinRefusal::OtherCluster)
        );
        assert_eq!(
            master("lab", 99).refusal("lab", None),
            Some(JoinRefusal::OtherProtocol)
        );
        let mut w = master("lab", 1);
        w.mode = ClientMode::Slave;
        assert_eq!(w.refusal("lab", None), Some(JoinRefusal::NotAMaster));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn seen_nodes_survive_both_encodings() {
        let node = SeenNode {
            advert: Advert {
                mode: ClientMode::Slave,
                node_id: "w".into(),
                cluster: "c".into(),
                proto: 1,
                nats_urls: vec![],
                http_port: None,
                summary: "slots=1".into(),
                ca: None,
            },
            addresses: vec!["10.0.0.1".parse().unwrap(), "fe80::1".parse().unwrap()],
            not_joined: Some(JoinRefusal::OtherCluster),
        };
        let pulse = crate::wire::SwarmPulse {
            unjoined: vec![node.clone()],
            ..Default::default()
        };
        for enc in [crate::Encoding::Json, crate::Encoding::MsgPack] {
            let bytes = crate::codec::encode(enc, &node).unwrap();
            let back: SeenNode = crate::codec::decode_as(enc, &bytes).unwrap();
            assert_eq!(back, node, "{enc:?}");
            // The way clients read it: inside the untagged reply envelope.
            let bytes = crate::codec::encode(enc, &pulse).unwrap();
            let back: crate::codec::Reply<crate::wire::SwarmPulse> =
                crate::codec::decode_as(enc, &bytes).unwrap();
            assert_eq!(
                back.into_result().unwrap().unjoined,
                vec![node.clone()],
                "{enc:?}"
            );
        }
    }
}
