//! Which guacd connection parameters a tenant may set, which name a host, and which only the operator may
//! set: the one table the control plane checks sessions against and the edge resolves hosts from.
//!
//! guacd does what its parameters say: connect to any host it is told (`hostname`, but also an SSH tunnel's
//! or SFTP's host, an RDP gateway, a VNC repeater), write files where it is told (recordings, typescripts,
//! a drive), send Wake-on-LAN packets anywhere. So a tenant's request may carry only parameters listed here
//! for its protocol, every parameter that names a host is held to the tenant's policy like `hostname`, and
//! file-system paths, recording, drives and the like come only from the operator's configuration. The names
//! are Apache Guacamole 1.5's (`guacd`'s protocol plugins); docs/control-plane.md lists them.

/// Parameters that name a host guacd will connect to, with the parameter that holds its port and the port
/// used when it is not given.
pub const HOSTS: [HostParam; 4] = [
    HostParam {
        host: "hostname",
        port: "port",
        default_port: 0,
    },
    HostParam {
        host: "dest-host",
        port: "dest-port",
        default_port: 5900,
    },
    HostParam {
        host: "sftp-hostname",
        port: "sftp-port",
        default_port: 22,
    },
    HostParam {
        host: "gateway-hostname",
        port: "gateway-port",
        default_port: 443,
    },
];

/// A parameter naming a host, and where its port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostParam {
    pub host: &'static str,
    pub port: &'static str,
    /// The port guacd uses when `port` is not given (0: the protocol's own, for `hostname`).
    pub default_port: u16,
}

/// Parameters only the operator may set: paths on guacd's own file system, session recording, drives and
/// transfers through guacd, Wake-on-LAN packets, the audio server guacd connects to.
pub fn operator_only(name: &str) -> bool {
    const PREFIXES: [&str; 4] = ["recording-", "typescript-", "wol-", "drive-"];
    const NAMES: [&str; 7] = [
        "create-recording-path",
        "create-typescript-path",
        "create-drive-path",
        "enable-drive",
        "disable-download",
        "disable-upload",
        "audio-servername",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || NAMES.contains(&name)
}

/// Whether a tenant's request may set `name` for `protocol`.
pub fn tenant_may_set(protocol: &str, name: &str) -> bool {
    if operator_only(name) {
        return false;
    }
    let own: &[&str] = match protocol {
        "vnc" => VNC,
        "rdp" => RDP,
        "ssh" => SSH,
        "telnet" => TELNET,
        "kubernetes" => KUBERNETES,
        _ => &[],
    };
    let sftp = matches!(protocol, "vnc" | "rdp") && name.starts_with("sftp-");
    ["hostname", "port"].contains(&name) || own.contains(&name) || sftp || terminal(protocol, name)
}

/// The display, clipboard and authentication parameters of each protocol.
const VNC: &[&str] = &[
    "username",
    "password",
    "autoretry",
    "color-depth",
    "swap-red-blue",
    "cursor",
    "encodings",
    "force-lossless",
    "compress-level",
    "quality-level",
    "read-only",
    "dest-host",
    "dest-port",
    "clipboard-encoding",
    "disable-copy",
    "disable-paste",
    "disable-server-input",
    "disable-display-resize",
    "enable-audio",
    "enable-sftp",
];

const RDP: &[&str] = &[
    "username",
    "password",
    "domain",
    "security",
    "ignore-cert",
    "cert-tofu",
    "cert-fingerprints",
    "disable-auth",
    "width",
    "height",
    "dpi",
    "color-depth",
    "resize-method",
    "force-lossless",
    "server-layout",
    "timezone",
    "console",
    "console-audio",
    "disable-audio",
    "enable-audio-input",
    "enable-touch",
    "enable-printing",
    "printer-name",
    "enable-wallpaper",
    "enable-theming",
    "enable-font-smoothing",
    "enable-full-window-drag",
    "enable-desktop-composition",
    "enable-menu-animations",
    "disable-bitmap-caching",
    "disable-offscreen-caching",
    "disable-glyph-caching",
    "disable-gfx",
    "preconnection-id",
    "preconnection-blob",
    "load-balance-info",
    "remote-app",
    "remote-app-dir",
    "remote-app-args",
    "initial-program",
    "client-name",
    "normalize-clipboard",
    "disable-copy",
    "disable-paste",
    "read-only",
    "gateway-hostname",
    "gateway-port",
    "gateway-username",
    "gateway-password",
    "gateway-domain",
    "enable-sftp",
];

const SSH: &[&str] = &[
    "host-key",
    "username",
    "password",
    "private-key",
    "passphrase",
    "command",
    "locale",
    "timezone",
    "server-alive-interval",
    "enable-sftp",
    "sftp-root-directory",
    "sftp-disable-download",
    "sftp-disable-upload",
];

const TELNET: &[&str] = &[
    "username",
    "username-regex",
    "password",
    "password-regex",
    "login-success-regex",
    "login-failure-regex",
];

const KUBERNETES: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "exec-command",
    "use-ssl",
    "client-cert",
    "client-key",
    "ca-cert",
    "ignore-cert",
];

/// The terminal's own parameters, for the protocols that draw one.
fn terminal(protocol: &str, name: &str) -> bool {
    const TERMINAL: [&str; 9] = [
        "font-name",
        "font-size",
        "color-scheme",
        "scrollback",
        "backspace",
        "terminal-type",
        "disable-copy",
        "disable-paste",
        "read-only",
    ];
    matches!(protocol, "ssh" | "telnet" | "kubernetes") && TERMINAL.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_set_what_their_protocol_takes_and_nothing_that_reaches_guacds_files() {
        assert!(tenant_may_set("vnc", "password"));
        assert!(tenant_may_set("rdp", "gateway-hostname"));
        assert!(tenant_may_set("ssh", "font-size"));
        assert!(tenant_may_set("vnc", "sftp-hostname"));
        assert!(!tenant_may_set("vnc", "font-size"), "VNC draws no terminal");
        assert!(
            !tenant_may_set("ssh", "gateway-hostname"),
            "another protocol's"
        );
        assert!(
            !tenant_may_set("telepathy", "password"),
            "an unknown protocol: host and port only"
        );
        assert!(tenant_may_set("telepathy", "hostname"));
        for path in [
            "recording-path",
            "create-recording-path",
            "typescript-path",
            "drive-path",
            "enable-drive",
            "wol-broadcast-addr",
            "audio-servername",
        ] {
            assert!(operator_only(path), "{path}");
            assert!(!tenant_may_set("rdp", path), "{path}");
        }
        assert!(!operator_only("password"));
    }

    #[test]
    fn every_host_parameter_is_one_a_tenant_may_set_somewhere() {
        for param in HOSTS {
            let somewhere = ["vnc", "rdp", "ssh"].iter().any(|protocol| {
                tenant_may_set(protocol, param.host) && tenant_may_set(protocol, param.port)
            });
            assert!(somewhere, "{param:?}");
        }
    }
}
