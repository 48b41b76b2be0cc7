//! The original locket's protocol (v1), all of it: the wire format
//! ([`wire`]), the endpoint (`endpoint`), the registry import
//! ([`import`]) and the `[v1]` settings (kept in `config::v1`). Spoken only when `[v1] enable =
//! true`, so that existing Go clients can move over unchanged.
//!
//! It shares the server's replay cache, clock rule, failed-authentication
//! limit, outcome type and log line with v2 ([`crate::server`]); only the
//! wire format and the answers' shape are its own.

mod endpoint;
pub mod import;
mod shape;
pub mod wire;

use std::sync::Arc;

use warp::Filter;
use warp::reply::Response;

pub use crate::config::v1::{Config, KEY_BITS, Lookup};
use crate::keys::{KeyError, ServerKey};
use crate::server::state::State;

/// Whether a body arriving as `chunks` can still be the original's JSON:
/// the check the endpoint runs on each piece as it is read, so that a body
/// that cannot be one is refused at its first wrong byte. `Err` names the
/// reason and the byte, never content. Public for the fuzz target, which
/// holds it to two promises: where the body is split does not change the
/// verdict, and it never refuses what an original client sends.
pub fn body_shape<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(), String> {
    let mut checker = shape::Shape::default();
    let mut offset = 0;
    for chunk in chunks {
        checker.feed(chunk, offset).map_err(|e| e.to_string())?;
        offset += chunk.len();
    }
    Ok(())
}

/// Loads (or creates) the separate `[v1] key_file`, when v1 is on and one is
/// set; `None` means v1 uses the server's main key.
pub(crate) fn load_key(config: &Config) -> Result<Option<ServerKey>, KeyError> {
    match (&config.key_file, config.enable) {
        (Some(path), true) => Ok(Some(ServerKey::load_or_create_logged(
            path,
            KEY_BITS,
            "v1 compat key",
        )?)),
        _ => Ok(None),
    }
}

/// The v1 routes, on `[v1] path` when `[v1] enable = true` (as configured at
/// start); otherwise they match nothing.
pub(crate) fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let (enabled, path) = {
        let cfg = &state.runtime.load().config.v1;
        (cfg.enable, cfg.path.clone())
    };
    warp::any()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(endpoint::routes(state, path))
}
