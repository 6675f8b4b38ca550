//! How every service connects to storage over gRPC.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// HTTP/2 flow-control windows of calls to and from storage. With the
/// protocol's default of 64 KiB a streamed message stalls for a round trip
/// every 64 KiB while the sender waits for WINDOW_UPDATE; messages are
/// mostly bigger than that, and storage is one hop away.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 DATA frame either side of a storage call accepts.
/// With the protocol's default of 16 KiB a message of 40 KB crossed as
/// three frames, each its own write and read; with this, one.
pub const MAX_FRAME: u32 = 256 * 1024;

/// A lazily connected channel to storage (a service starts, and answers
/// with temporary errors, while storage is still down): a 5 s connect
/// timeout, TCP_NODELAY, the windows and frame size above, and `timeout`
/// per call when set.
pub fn storage_channel(url: &str, timeout: Option<Duration>) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint.connect_lazy())
}
