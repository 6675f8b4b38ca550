//! Messages of `proto/mailfleet/storage/v1/storage.proto`, generated with a
//! vendored protoc like crates/proto does, without the gRPC services.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=../../proto/mailfleet/storage/v1/storage.proto");
    config.compile_protos(
        &["../../proto/mailfleet/storage/v1/storage.proto"],
        &["../../proto", protoc_bin_vendored::include_path()?.to_str().ok_or("include path")?],
    )?;
    Ok(())
}
