//! Mints a JWT the way test suites do (see docs/src/test-suites.md, "Tokens minted by the
//! runner"): the token spec is YAML on standard input, key paths are relative
//! to the current directory.
//!
//! ```sh
//! echo '{key: examples/identity/keys/issuer.pem, kid: issuer-1, claims: {sub: alice, roles: [reader]}}' \
//!   | cargo run --example mint_token
//! ```

use std::io::Read as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut spec = String::new();
    std::io::stdin().read_to_string(&mut spec)?;
    let spec: celgate::suite_token::TokenSpec = serde_yaml_ng::from_str(&spec)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    println!(
        "{}",
        celgate::suite_token::mint(&spec, std::path::Path::new("."), now)?
    );
    Ok(())
}
