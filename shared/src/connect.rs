//! The connect data a Guacamole client sends: the WebSocket tunnel's query string, or the HTTP tunnel's
//! `connect` body. Both are `application/x-www-form-urlencoded`, with the stock web application's names
//! (`TunnelRequest.java`): `token`, `GUAC_WIDTH`, `GUAC_HEIGHT`, `GUAC_DPI`, `GUAC_TIMEZONE` and repeated
//! `GUAC_AUDIO`, `GUAC_VIDEO`, `GUAC_IMAGE`, and deskbroker's own `replaces`. Unknown names are ignored;
//! malformed numbers fall back to the defaults, as the Java side does.

use crate::ids::{SessionToken, TunnelId};

/// Java's defaults (`GuacamoleClientInformation`): 1024x768 at 96 DPI.
pub const DEFAULT_WIDTH: u32 = 1024;
pub const DEFAULT_HEIGHT: u32 = 768;
pub const DEFAULT_DPI: u32 = 96;
/// Largest width or height accepted from a client; bigger values fall back to the defaults.
pub const MAX_DIMENSION: u32 = 16384;
/// Most mimetypes accepted per kind; more are ignored (guacd allows 128 elements per instruction).
pub const MAX_MIMETYPES: usize = 32;

/// What the client tells guacd about itself during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub audio: Vec<String>,
    pub video: Vec<String>,
    pub image: Vec<String>,
    pub timezone: Option<String>,
}

impl Default for ClientInfo {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            dpi: DEFAULT_DPI,
            audio: Vec::new(),
            video: Vec::new(),
            image: Vec::new(),
            timezone: None,
        }
    }
}

/// A parsed connect request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectRequest {
    pub token: Option<SessionToken>,
    pub client: ClientInfo,
    /// The tunnel this one replaces: a page that reconnects names its previous tunnel by the id the
    /// tunnel told it (`replaces=<uuid>`), so that the new one takes that tunnel's quota slot and ends it.
    pub replaces: Option<TunnelId>,
    /// The browser's address, as the server tells it (never from the form): for the logs.
    pub client_addr: Option<std::net::IpAddr>,
}

impl ConnectRequest {
    pub fn parse(form: &[u8]) -> Self {
        let mut request = Self::default();
        let client = &mut request.client;
        for (name, value) in form_urlencoded::parse(form) {
            match &*name {
                "token" if !value.is_empty() => request.token = Some(SessionToken::new(value)),
                "GUAC_WIDTH" => client.width = dimension(&value, DEFAULT_WIDTH),
                "GUAC_HEIGHT" => client.height = dimension(&value, DEFAULT_HEIGHT),
                "GUAC_DPI" => client.dpi = dimension(&value, DEFAULT_DPI),
                "GUAC_TIMEZONE" if !value.is_empty() => client.timezone = Some(value.into()),
                "GUAC_AUDIO" => push(&mut client.audio, value.into()),
                "GUAC_VIDEO" => push(&mut client.video, value.into()),
                "GUAC_IMAGE" => push(&mut client.image, value.into()),
                "replaces" => request.replaces = TunnelId::parse(&value),
                _ => {}
            }
        }
        request
    }
}

fn dimension(value: &str, default: u32) -> u32 {
    match value.parse() {
        Ok(n) if n > 0 && n <= MAX_DIMENSION => n,
        _ => default,
    }
}

fn push(list: &mut Vec<String>, mimetype: String) {
    if list.len() < MAX_MIMETYPES && !mimetype.is_empty() {
        list.push(mimetype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stock_web_apps_fields() {
        let request = ConnectRequest::parse(
            b"token=abc&GUAC_DATA_SOURCE=x&GUAC_WIDTH=1920&GUAC_HEIGHT=1080&GUAC_DPI=120\
              &GUAC_TIMEZONE=Europe%2FBerlin&GUAC_AUDIO=audio%2FL16&GUAC_IMAGE=image%2Fpng&GUAC_IMAGE=image%2Fjpeg",
        );
        assert_eq!(
            request.token.as_ref().map(SessionToken::expose),
            Some("abc")
        );
        let client = request.client;
        assert_eq!((client.width, client.height, client.dpi), (1920, 1080, 120));
        assert_eq!(client.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(client.audio, ["audio/L16"]);
        assert_eq!(client.image, ["image/png", "image/jpeg"]);
        assert_eq!(request.replaces, None);
    }

    #[test]
    fn names_the_tunnel_a_reconnect_replaces() {
        let id = TunnelId::random();
        let request = ConnectRequest::parse(format!("token=abc&replaces={id}").as_bytes());
        assert_eq!(request.replaces, Some(id));
        let request = ConnectRequest::parse(b"token=abc&replaces=not-a-uuid");
        assert_eq!(request.replaces, None, "nonsense names nothing");
    }

    #[test]
    fn falls_back_on_nonsense() {
        let request =
            ConnectRequest::parse(b"GUAC_WIDTH=-5&GUAC_HEIGHT=abc&GUAC_DPI=99999999&token=");
        assert_eq!(request.token, None);
        assert_eq!(request.client, ClientInfo::default());
        assert_eq!(ConnectRequest::parse(b"%%%&&=="), ConnectRequest::default());
    }
}
