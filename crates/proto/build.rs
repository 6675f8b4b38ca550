//! Compiles the contracts in `proto/` with a vendored `protoc`, so a fresh
//! machine needs nothing but cargo. A `PROTOC` already in the environment wins.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    if std::env::var_os("PROTOC_INCLUDE").is_none() {
        unsafe { std::env::set_var("PROTOC_INCLUDE", protoc_bin_vendored::include_path()?) };
    }
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure()
        // Message octets on the read paths decode as `Bytes` that share the
        // HTTP/2 receive buffer, instead of a copy into a new Vec each.
        .bytes(".mailfleet.storage.v1.RangeChunk.data")
        .bytes(".mailfleet.storage.v1.FetchChunk.data")
        .compile_protos(
            &[
                "../../proto/mailfleet/storage/v1/storage.proto",
                "../../proto/mailfleet/storage/v1/admin.proto",
                "../../proto/mailfleet/storage/v1/events.proto",
                "../../proto/mailfleet/queue/v1/queue.proto",
            ],
            &["../../proto"],
        )?;
    Ok(())
}
