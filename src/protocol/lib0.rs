//! lib0's variable-length unsigned integer, as Yjs and y-protocols encode
//! every length, count, client id and clock: 7 bits a byte, lowest first,
//! the high bit set on every byte but the last. Readers here accept at most
//! [`MAX_VAR_BYTES`] bytes and values up to [`MAX_SAFE`] (2^53 - 1, what
//! lib0 itself can read and write), so a hostile count cannot overflow.

/// Largest var-uint accepted: 2^53 - 1.
pub const MAX_SAFE: u64 = (1 << 53) - 1;

/// Longest var-uint accepted, in bytes.
pub const MAX_VAR_BYTES: usize = 10;

/// Why a var-uint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarError {
    /// The bytes ended inside the integer.
    Truncated,
    /// Over [`MAX_SAFE`], or longer than [`MAX_VAR_BYTES`].
    TooLarge,
}

/// Reads a var-uint from `buf` at `*pos`, advancing `*pos` past it.
pub fn read_var_uint(buf: &[u8], pos: &mut usize) -> Result<u64, VarError> {
    let mut value = 0u64;
    for i in 0..MAX_VAR_BYTES {
        let &b = buf.get(*pos).ok_or(VarError::Truncated)?;
        *pos += 1;
        value = add_bits(value, u64::from(b & 0x7f), 7 * i as u32).ok_or(VarError::TooLarge)?;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarError::TooLarge)
}

/// `value` with `bits` (< 2^7) added at `shift`; `None` past [`MAX_SAFE`].
pub fn add_bits(value: u64, bits: u64, shift: u32) -> Option<u64> {
    if bits == 0 {
        return Some(value);
    }
    // bits < 2^7: shifting by 53 or more is over the limit already.
    if shift >= 53 {
        return None;
    }
    let v = value | (bits << shift);
    (v <= MAX_SAFE).then_some(v)
}

/// Appends `n` as a var-uint.
pub fn write_var_uint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends `bytes` prefixed with their length (lib0 `varUint8Array`).
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        for n in [0, 1, 127, 128, 300, 1 << 32, MAX_SAFE] {
            let mut out = Vec::new();
            write_var_uint(&mut out, n);
            let mut pos = 0;
            assert_eq!(read_var_uint(&out, &mut pos), Ok(n));
            assert_eq!(pos, out.len());
        }
        let mut big = Vec::new();
        write_var_uint(&mut big, MAX_SAFE + 1);
        assert_eq!(read_var_uint(&big, &mut 0), Err(VarError::TooLarge));
        assert_eq!(
            read_var_uint(&[0x80, 0x80], &mut 0),
            Err(VarError::Truncated)
        );
        assert_eq!(read_var_uint(&[0xff; 11], &mut 0), Err(VarError::TooLarge));
    }
}
