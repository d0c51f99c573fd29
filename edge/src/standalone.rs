//! What a node without Redis adds: the built-in demo desktop, and the control-plane API served by the node
//! itself, reading byte counts from its own tunnels. (In a cluster the API is `deskbroker-broker`'s.)

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::api::traffic::TrafficSource;
use deskbroker_broker::api::{self, Api, ApiConfig};
use deskbroker_broker::config::ConfigError;
use deskbroker_broker::tenants::{Limits, Policy, Tenant};
use deskbroker_broker::{BoxFuture, RegistryError, restore, session_file};
use deskbroker_demo::DemoDesktop;
use deskbroker_shared::cluster::NodeRecord;
use deskbroker_shared::ids::{SessionId, SessionToken, TenantId, TokenDigest};
use deskbroker_shared::peer::TrafficAnswer;
use deskbroker_shared::session::{HostPort, Session, Target};

use crate::config::ControlPlane;
use crate::node::Node;

/// The demo tenant's API key: `--demo` binds to loopback and is for trying deskbroker out.
pub const DEMO_KEY: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("demo desktop: {0}")]
    Demo(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The demo desktop, ready to serve.
pub struct Demo {
    /// Serves viewers until the token given to [`start_demo`] is cancelled.
    pub serve: BoxFuture<'static, ()>,
    /// `GET /demo/input`: what viewers typed and pointed at (the last key's keysym, the pointer and its
    /// buttons), so a person or a browser test can check that input arrived.
    pub routes: Router,
}

/// Binds the demo desktop to a loopback port and grants it to the token `demo`.
pub async fn start_demo(
    sessions: &mut Vec<(SessionToken, Session)>,
    shutdown: CancellationToken,
) -> Result<Demo, StandaloneError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let target = Target::Vnc {
        addr: HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
    };
    let tenant = TenantId::new(session_file::DEFAULT_TENANT);
    sessions.push((
        SessionToken::new("demo"),
        Session {
            trusted_target: true,
            ..Session::new(SessionId::new("demo"), tenant, target)
        },
    ));
    info!(%addr, "demo desktop serving; open /websockify?token=demo");
    let desktop = DemoDesktop::new(deskbroker_demo::Config::default());
    let viewed = desktop.clone();
    let routes = Router::new().route(
        "/demo/input",
        axum::routing::get(move || {
            let input = viewed.input_state();
            async move {
                axum::Json(serde_json::json!({
                    "last_key": input.last_key, "x": input.x, "y": input.y, "buttons": input.buttons,
                }))
            }
        }),
    );
    let serve = Box::pin(async move { desktop.serve(listener, shutdown).await });
    Ok(Demo { serve, routes })
}

/// The control-plane API for a node without Redis: the configured tenants, and with `demo` a tenant `demo`
/// (API key `demo`) that may reach VNC servers on loopback.
pub async fn control_plane(
    node: &Node,
    plane: ControlPlane,
    demo: bool,
) -> Result<Router, StandaloneError> {
    let registry = node.membership().registry().clone();
    let config = plane.config;
    let mut tenants = config.tenants.clone();
    if demo {
        let policy = Policy {
            hosts: vec!["127.0.0.1".into()],
            ports: vec!["1-65535".into()],
            kinds: vec!["vnc".into()],
        };
        let key_sha256 = TokenDigest::of(DEMO_KEY);
        tenants.push(Tenant {
            id: TenantId::new("demo"),
            key_sha256,
            policy,
            limits: Limits::default(),
            guacd_params: Default::default(),
        });
    }
    // Marked as written, as the broker marks its own: its memory never loses them, so an unknown tenant
    // is one that is gone.
    let mut write_tenants = || {
        let (registry, tenants) = (registry.clone(), tenants.clone());
        async move {
            for tenant in &tenants {
                registry.put_tenant(tenant).await?;
            }
            Ok(())
        }
    };
    restore::write(
        registry.as_ref(),
        restore::TENANTS_MARKER,
        &mut write_tenants,
    )
    .await?;
    let api_config = ApiConfig {
        traffic: Some(Arc::new(LocalTraffic(node.clone()))),
        admin_key: plane.admin_key,
        guacd_pools: config.pools()?,
        // A node alone keeps its registry in memory: tokens live as long as it does.
        sealer: None,
    };
    Ok(api::router(Api::new(registry, api_config)))
}

/// Byte counts read from this node's own tunnels.
struct LocalTraffic(Node);

impl TrafficSource for LocalTraffic {
    fn traffic<'a>(
        &'a self,
        _node: &'a NodeRecord,
        sessions: &'a [SessionId],
    ) -> BoxFuture<'a, Option<TrafficAnswer>> {
        let answer = self.0.traffic(sessions);
        Box::pin(async move { Some(answer) })
    }
}
