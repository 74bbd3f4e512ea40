use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use wasmgate_shared_store::{Cas, SetError, SharedStore};

/// [`SharedStore`] over Envoy's shared data (scoped to this filter's `vm_id`).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Refused),
        }
    }
}
