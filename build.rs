//! Compiles the vendored Envoy protos in `proto/` into a file descriptor set
//! for gRPC server reflection (envoy-types ships none). Pure Rust (protox):
//! no protoc needed.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let set = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("compiling proto/: {e}"));
    let bytes = prost::Message::encode_to_vec(&set);
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("authz_descriptor.bin"), bytes).expect("writing the descriptor set");
}
