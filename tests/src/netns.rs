//! Hosts made of network namespaces, for multi-host tests: a switch namespace holding a
//! bridge, one namespace per host joined to it by a veth pair, and a veth from the test's own
//! namespace so the test can reach the hosts. Addresses are in a /24 of 10.213.0.0/16 that
//! exists only inside these namespaces. A host can be cut off the LAN ([`Lan::link_down`]), or
//! two hosts cut apart while both stay on it ([`Lan::cut_between`]). Everything is removed on
//! drop, also when a test fails.
//! Needs root and `ip` (iproute2); elsewhere [`Lan::new`] returns `None` and says why.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One host: its namespace and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The switch-side end of its veth, the one `link_down` takes down.
    switch_end: String,
}

/// A LAN of namespaces.
#[derive(Debug)]
pub struct Lan {
    tag: String,
    subnet: u8,
    switch: String,
    root_veth: String,
    hosts: Vec<Host>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// Builds a LAN of `n` hosts, or returns `None` (printing why) where namespaces cannot be
    /// made.
    pub fn new(n: usize) -> Result<Option<Lan>> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: multi-host tests need root to create network namespaces");
            return Ok(None);
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIPPED: multi-host tests need `ip` (Debian package iproute2)");
            return Ok(None);
        }
        // Lans made at once by one test binary (its tests run in parallel) must differ in
        // names and in subnet: two LANs on one subnet would share the test's routes, and its
        // packets would reach the other LAN's hosts.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let nth = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:x}{nth:x}", pid & 0xfff);
        let subnet = (1 + (pid.wrapping_add(nth) % 250)) as u8;
        let mut lan = Lan {
            switch: format!("vgsw{tag}"),
            root_veth: format!("vgr{tag}"),
            tag,
            subnet,
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lan.switch])?;
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"])?;
        ip(&["-n", &lan.switch, "link", "set", "lo", "up"])?;
        // The test's own end, so it can reach nats-server on a host.
        let peer = format!("vgp{}", lan.tag);
        ip(&[
            "link",
            "add",
            &lan.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &lan.switch])?;
        ip(&[
            "-n",
            &lan.switch,
            "link",
            "set",
            &peer,
            "master",
            "br0",
            "up",
        ])?;
        let root_addr = format!("{}/24", lan.root_addr());
        ip(&["addr", "add", &root_addr, "dev", &lan.root_veth])?;
        ip(&["link", "set", &lan.root_veth, "up"])?;
        for _ in 0..n {
            lan.add_host()?;
        }
        Ok(Some(lan))
    }

    /// Adds one more host (a new address on the same LAN).
    pub fn add_host(&mut self) -> Result<Host> {
        let i = self.hosts.len();
        let ns = format!("vgh{}-{}", i, self.tag);
        let (inner, outer) = (format!("vgi{i}{}", self.tag), format!("vgo{i}{}", self.tag));
        let addr = Ipv4Addr::new(10, 213, self.subnet, (i + 1) as u8);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &outer, "netns", &self.switch])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &outer,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // mDNS needs a multicast route.
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        let host = Host {
            ns,
            addr,
            switch_end: outer,
        };
        self.hosts.push(host.clone());
        Ok(host)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The test's own address on the LAN (its namespace's end): a service the test runs
    /// must listen there for the hosts to reach it (they cannot reach the test's loopback).
    pub fn root_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    /// Every host, in the order they were made.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Cuts the network between hosts `i` and `j` alone: each drops what it would send to the
    /// other (a blackhole route to the other's address), while both keep their cable, so the
    /// test and every other host still reach either side. Established connections between
    /// the two are not closed: they stall, as over a real partition, until one end's
    /// keepalive gives up or [`Lan::heal_between`] lets them carry on. Made undone by
    /// `heal_between`, and with everything else on drop (the routes go with the namespaces).
    pub fn cut_between(&self, i: usize, j: usize) -> Result<()> {
        self.blackholes(i, j, "replace")
    }

    /// Undoes [`Lan::cut_between`]: hosts `i` and `j` reach each other again.
    pub fn heal_between(&self, i: usize, j: usize) -> Result<()> {
        self.blackholes(i, j, "del")
    }

    /// Adds (`replace`) or removes (`del`) the blackhole route of each of hosts `i` and `j`
    /// to the other's address.
    fn blackholes(&self, i: usize, j: usize, op: &str) -> Result<()> {
        for (from, to) in [(i, j), (j, i)] {
            let dest = format!("{}/32", self.hosts[to].addr);
            ip(&["-n", &self.hosts[from].ns, "route", op, "blackhole", &dest])?;
        }
        Ok(())
    }

    /// Cuts host `i` off the LAN (its cable pulled at the switch): the test's own namespace
    /// loses it too; what runs inside the host still reaches the host's own address.
    pub fn link_down(&self, i: usize) -> Result<()> {
        self.switch_port(i, "down")
    }

    /// Takes host `i`'s own interface down or up, as if it were configured after start.
    pub fn set_host_interface(&self, i: usize, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.hosts[i].ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])?;
        if up {
            // The multicast route goes with the link; put it back.
            let _ = ip(&[
                "-n",
                &self.hosts[i].ns,
                "route",
                "replace",
                "224.0.0.0/4",
                "dev",
                "eth0",
            ]);
        }
        Ok(())
    }

    /// Plugs host `i` back in.
    pub fn link_up(&self, i: usize) -> Result<()> {
        self.switch_port(i, "up")
    }

    /// Sets the switch-side end of host `i`'s cable `up` or `down`.
    fn switch_port(&self, i: usize, state: &str) -> Result<()> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.hosts[i].switch_end,
            state,
        ])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.root_veth]);
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
