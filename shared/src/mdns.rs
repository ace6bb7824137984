//! `NetworkDiscovery`: announcing a node and browsing for others over mDNS (`mdns-sd`), the
//! glue between the sockets and the pure rules in [`crate::discovery`]. Compiled only with
//! the `mdns` feature, which the master and worker crates enable; this is the one module of
//! `vgas-shared` that opens sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::config::MdnsConfig;
use crate::discovery::{Advert, SeenNode, SERVICE_TYPE};

/// How often the daemon looks for interfaces that came up or went away, so an interface that
/// appears after start is used within this time.
pub const INTERFACE_CHECK_SECS: u32 = 5;

/// Why mDNS could not start or announce.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct MdnsError(String);

fn err(e: impl std::fmt::Display) -> MdnsError {
    MdnsError(e.to_string())
}

/// One node's mDNS presence and browser.
pub struct NetworkDiscovery {
    daemon: ServiceDaemon,
    registered: Option<String>,
}

impl std::fmt::Debug for NetworkDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkDiscovery")
            .field("registered", &self.registered)
            .finish()
    }
}

/// What a browse reports.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A vgas node resolved (or re-resolved) under this full name.
    Up { fullname: String, node: SeenNode },
    /// The node under this full name said goodbye or expired.
    Down { fullname: String },
}

impl NetworkDiscovery {
    /// Starts the daemon on the configured interfaces: the named ones, or every non-loopback
    /// interface.
    pub fn start(cfg: &MdnsConfig) -> Result<NetworkDiscovery, MdnsError> {
        let daemon = ServiceDaemon::new().map_err(err)?;
        daemon.disable_interface(IfKind::LoopbackV4).map_err(err)?;
        daemon.disable_interface(IfKind::LoopbackV6).map_err(err)?;
        if !cfg.interfaces.is_empty() {
            daemon.disable_interface(IfKind::All).map_err(err)?;
            for name in &cfg.interfaces {
                let kind = if name == "lo" {
                    IfKind::LoopbackV4
                } else {
                    IfKind::Name(name.clone())
                };
                daemon.enable_interface(kind).map_err(err)?;
            }
        }
        daemon
            .set_ip_check_interval(INTERFACE_CHECK_SECS)
            .map_err(err)?;
        Ok(NetworkDiscovery {
            daemon,
            registered: None,
        })
    }

    /// Announces this node (seed: `broadcast_presence`). `port` is the service port of the
    /// SRV record: the NATS port for a master, 0 for a worker, which serves no port.
    pub fn broadcast_presence(&mut self, advert: &Advert, port: u16) -> Result<(), MdnsError> {
        let instance = format!("{}-{}", advert.node_id, advert.cluster);
        let host = format!("{}.local.", advert.node_id);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            "",
            port,
            advert.to_properties(),
        )
        .map_err(err)?
        .enable_addr_auto();
        self.registered = Some(info.get_fullname().to_owned());
        self.daemon.register(info).map_err(err)
    }

    /// Browses for vgas nodes; events arrive on the returned channel until [`Self::stop`].
    pub fn browse(&self) -> Result<tokio::sync::mpsc::Receiver<Seen>, MdnsError> {
        let rx = self.daemon.browse(SERVICE_TYPE).map_err(err)?;
        // Bounded: a browser that stops reading loses nothing it needs, the next
        // announcement carries the same facts.
        let (tx, out) = tokio::sync::mpsc::channel(256);
        std::thread::Builder::new()
            .name("vgas-mdns-browse".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    let seen = match ev {
                        ServiceEvent::ServiceResolved(info) => {
                            let props: HashMap<String, String> = info
                                .get_properties()
                                .iter()
                                .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                                .collect();
                            let Some(advert) = Advert::from_properties(&props) else {
                                continue;
                            };
                            let addresses: Vec<IpAddr> = info
                                .get_addresses()
                                .iter()
                                .map(|a| a.to_ip_addr())
                                .collect();
                            Seen::Up {
                                fullname: info.get_fullname().to_owned(),
                                node: SeenNode {
                                    advert,
                                    addresses,
                                    not_joined: None,
                                },
                            }
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => Seen::Down { fullname },
                        _ => continue,
                    };
                    if tx.try_send(seen).is_err() && tx.is_closed() {
                        break;
                    }
                }
            })
            .map_err(err)?;
        Ok(out)
    }

    /// Says goodbye (announcements with TTL 0) and stops the daemon, waiting briefly for the
    /// goodbye packets to leave.
    pub fn stop(self) {
        if let Some(name) = &self.registered {
            if let Ok(rx) = self.daemon.unregister(name) {
                let _ = rx.recv_timeout(Duration::from_secs(1));
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_secs(1));
        }
    }
}
