//! Triton's binary tensor extension: the JSON part first (its length in the
//! `Inference-Header-Content-Length` header), then each binary tensor's raw bytes in order,
//! little-endian and row-major, BOOL as one byte, BYTES as a 4-byte length and the bytes.
//! `tritonclient` sends and asks for tensors this way unless told `binary_data=False`.

use crate::error::Error;
use crate::tensor::{Datatype, bytes_elements};

/// Split a body into its JSON part and its binary part (empty without the header).
pub fn split<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), Error> {
    let Some(header_length) = header_length else {
        return Ok((body, &[]));
    };
    let length: usize = header_length.trim().parse().map_err(|_| {
        Error::InvalidInput(format!(
            "Inference-Header-Content-Length '{header_length}' is not a byte count"
        ))
    })?;
    if length > body.len() {
        return Err(Error::InvalidInput(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

/// Take one input's `size` bytes off the front of `rest`, checking they hold exactly `count`
/// elements of `datatype`.
pub fn take_input(
    rest: &mut &[u8],
    size: u64,
    datatype: Datatype,
    count: u64,
) -> Result<Vec<u8>, String> {
    let size = usize::try_from(size).map_err(|_| "binary_data_size is too large".to_string())?;
    let Some((data, tail)) = rest.split_at_checked(size) else {
        return Err(format!(
            "binary_data_size is {size} but only {} bytes of binary data remain",
            rest.len()
        ));
    };
    *rest = tail;
    match datatype.size() {
        Some(element) => {
            let want = count.checked_mul(element as u64);
            if want != Some(size as u64) {
                return Err(format!(
                    "{count} {datatype} elements take {} bytes, binary_data_size is {size}",
                    want.map_or("too many".to_string(), |w| w.to_string())
                ));
            }
            if datatype == Datatype::Bool && data.iter().any(|&b| b > 1) {
                return Err("BOOL elements must be bytes 0 or 1".into());
            }
        }
        None => {
            let mut elements = 0u64;
            for element in bytes_elements(data) {
                element.map_err(str::to_string)?;
                elements += 1;
            }
            if elements != count {
                return Err(format!(
                    "shape needs {count} BYTES elements, binary data has {elements}"
                ));
            }
        }
    }
    Ok(data.to_vec())
}
