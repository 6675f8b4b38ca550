//! Wiring: Postgres pool, migrations, blob store, NATS, and the two gRPC
//! listeners (service API and admin API).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use mailfleet_proto::storage::v1::admin_server::AdminServer;
use mailfleet_proto::storage::v1::directory_server::DirectoryServer;
use mailfleet_proto::storage::v1::locks_server::LocksServer;
use mailfleet_proto::storage::v1::mailboxes_server::MailboxesServer;
use mailfleet_proto::storage::v1::messages_server::MessagesServer;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::auth::identity::Guarded;
use crate::auth::session::SessionKeys;
use crate::blob::FsBlobStore;
use crate::directory::DirectoryService;
use crate::events::EventPublisher;
use crate::locks::LocksService;
use crate::mailboxes::MailboxesService;
use crate::messages::MessagesService;
use crate::{MIGRATOR, StorageConfig, Store};

/// A storage instance serving on real sockets.
pub struct RunningStorage {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Arc<Store>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// The connection options of `database_url`. A Postgres on this machine
/// (loopback or a Unix socket) is reached without TLS unless the URL asks
/// for it with `sslmode`: over loopback, encryption protects nothing and
/// costs CPU on both ends for every statement (sqlx's default, `prefer`,
/// would use it whenever the server offers it, as Debian's does).
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    let host = options.get_host();
    let local = host.starts_with('/')
        || host == "localhost"
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if local && !database_url.contains("sslmode=") {
        return Ok(options.ssl_mode(sqlx::postgres::PgSslMode::Disable));
    }
    Ok(options)
}

/// Create the configured database when it does not exist yet, so that the
/// first start on a fresh machine needs no manual `createdb`.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let options = connect_options(database_url)?;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(err) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await {
            // Another replica may have created it at the same moment.
            if !crate::error::is_unique_violation(&err) {
                return Err(err.into());
            }
        }
        tracing::info!(database = %name, "created database");
    }
    Ok(())
}

/// Connect, migrate and start serving. Returns once both listeners are bound.
/// Delete failed logins older than the throttle's window, once a minute.
async fn forget_old_auth_failures(store: Arc<Store>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = store.auth_throttle.forget_old(&store.pool).await {
            tracing::warn!(error = %e, "deleting old failed logins");
        }
    }
}

pub async fn serve(config: StorageConfig, shutdown: CancellationToken) -> anyhow::Result<RunningStorage> {
    // Mutual TLS on both listeners: every caller shows its fleet
    // certificate, and `Guarded` lets it call only what its role allows.
    // Checked first: without an identity storage serves nothing.
    let tls = config.identity.server_tls().context("identity")?;
    config.identity.report_expiry("storage");
    ensure_database(&config.database_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        // sqlx would ping every connection before handing it out: a round
        // trip to Postgres for each statement, about a tenth of storage's
        // CPU under load. A broken connection fails its statement instead,
        // which the caller sees as UNAVAILABLE and retries.
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(5))
        // Every statement storage runs is prepared once per connection and
        // then run with new parameters (PL/pgSQL's too); left to decide,
        // Postgres plans many of them afresh for every execution, which
        // was a few per cent of its CPU under SMTP load. Our statements are
        // index lookups by key whose best plan does not depend on the
        // values, so the generic plan is the one to keep.
        .connect_with(connect_options(&config.database_url)?.options([("plan_cache_mode", "force_generic_plan")]))
        .await?;
    MIGRATOR.run(&pool).await?;

    let nats = mailfleet_runtime::nats::connect(
        &config.nats_url,
        &config.nats_tls,
        "storage",
        async_nats::ConnectOptions::new().retry_on_initial_connect(),
    )
    .await?;
    let blobs = Arc::new(FsBlobStore::new(&config.blob_dir)?);
    let sessions = SessionKeys::load(&pool, config.session_key_file.as_deref(), config.session_ttl).await?;
    let store = Arc::new(Store {
        pool,
        blobs,
        jetstream: Some(async_nats::jetstream::new(nats.clone())),
        events: EventPublisher::new(Some(nats), config.events_prefix.clone()),
        config: Arc::new(config.clone()),
        auth_throttle: crate::auth_throttle::AuthThrottle::new(config.auth_throttle.clone()),
        sessions,
        sweeps_deferred: Default::default(),
    });
    tokio::spawn(forget_old_auth_failures(store.clone(), shutdown.clone()));

    let listener = TcpListener::bind(config.listen).await?;
    let admin_listener = TcpListener::bind(config.admin_listen).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MessagesServer<MessagesService>>().await;
    health_reporter.set_serving::<DirectoryServer<DirectoryService>>().await;

    let max = config.max_message_size as usize + 1024 * 1024;
    let service_router = Server::builder()
        .tls_config(tls.clone())
        .context("identity")?
        .trace_fn(mailfleet_runtime::telemetry::grpc_server_span)
        // Messages arrive streamed (PutBlob, Append): see runtime::grpc.
        .initial_stream_window_size(mailfleet_runtime::grpc::STREAM_WINDOW)
        .initial_connection_window_size(mailfleet_runtime::grpc::CONNECTION_WINDOW)
        .max_frame_size(mailfleet_runtime::grpc::MAX_FRAME)
        .add_service(health_service.clone())
        .add_service(Guarded(DirectoryServer::new(DirectoryService(store.clone()))))
        .add_service(Guarded(MailboxesServer::new(MailboxesService(store.clone()))))
        .add_service(Guarded(
            MessagesServer::new(MessagesService(store.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        ))
        .add_service(Guarded(LocksServer::new(LocksService(store.clone()))));

    let token = config.admin_token.clone();
    let admin_router = Server::builder()
        .tls_config(tls)
        .context("identity")?
        .trace_fn(mailfleet_runtime::telemetry::grpc_server_span)
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            Guarded(AdminServer::new(AdminService(store.clone()))),
            move |req: tonic::Request<()>| check_admin_token(token.as_deref(), req),
        ));

    let shutdown_for_sweep = shutdown.clone();
    let s1 = shutdown.clone();
    let s2 = shutdown.clone();
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        let a = service_router.serve_with_incoming_shutdown(no_delay(listener), s1.cancelled_owned());
        let b = admin_router.serve_with_incoming_shutdown(no_delay(admin_listener), s2.cancelled_owned());
        let serving = async {
            let (ra, rb) = tokio::join!(a, b);
            ra?;
            rb?;
            Ok(())
        };
        // A graceful shutdown waits for every connection to close, which a
        // client can put off for ever (an idle HTTP/2 connection it keeps,
        // a stream it never ends). After the grace the rest are dropped:
        // a call cut off that way was never answered, so its caller
        // retries, and nothing it did half is acknowledged anywhere.
        let overdue = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serving => served,
            () = overdue => {
                tracing::warn!(?grace, "connections still open after the shutdown grace; closing them");
                Ok(())
            }
        }
    });
    crate::sweep::schedule(store.clone(), shutdown_for_sweep);
    tracing::info!(%addr, %admin_addr, "storage serving");
    Ok(RunningStorage { addr, admin_addr, store, task })
}

/// Accepted sockets with Nagle's algorithm off. tonic's own `tcp_nodelay`
/// only applies to listeners it binds itself; without this every small gRPC
/// reply waits ~40 ms for the client's delayed ACK.
fn no_delay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

fn check_admin_token(token: Option<&str>, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let Some(expected) = token else {
        return Ok(req);
    };
    let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    // Compared in constant time: how long a wrong guess takes says nothing
    // about how much of it was right.
    let matches = given
        .strip_prefix("Bearer ")
        .is_some_and(|t| aws_lc_rs::constant_time::verify_slices_are_equal(t.as_bytes(), expected.as_bytes()).is_ok());
    if matches { Ok(req) } else { Err(tonic::Status::unauthenticated("admin token required")) }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgSslMode;

    use super::connect_options;

    #[test]
    fn local_postgres_is_reached_without_tls_unless_the_url_asks() {
        let mode = |url: &str| connect_options(url).expect("valid URL").get_ssl_mode();
        assert!(matches!(mode("postgres://postgres@127.0.0.1:5432/mailfleet"), PgSslMode::Disable));
        assert!(matches!(mode("postgres://postgres@localhost/mailfleet"), PgSslMode::Disable));
        assert!(matches!(mode("postgres://postgres@[::1]:5432/mailfleet"), PgSslMode::Disable));
        assert!(matches!(mode("postgres://postgres@127.0.0.1/mailfleet?sslmode=require"), PgSslMode::Require));
        assert!(matches!(mode("postgres://mailfleet@db.example.net/mailfleet"), PgSslMode::Prefer));
    }
}
