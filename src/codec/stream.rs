//! XChaCha20-Poly1305 STREAM (the "BE32" flavour: a 19-byte nonce prefix,
//! a big-endian 32-bit chunk counter and a last-chunk flag), byte for byte
//! what `aead_stream::EncryptorBE32<XChaCha20Poly1305>` writes, computed with
//! ring's ChaCha20-Poly1305 (about twice as fast as the portable one on the
//! machines measured: the cipher was a third of a restore's CPU time).
//!
//! XChaCha20-Poly1305 with key K and 24-byte nonce N is ChaCha20-Poly1305
//! with the key HChaCha20(K, N[0..16]) and the 12-byte nonce
//! `0000 ‖ N[16..24]`. In STREAM the first 16 nonce bytes belong to the
//! prefix, fixed for the object: the subkey is derived once per object.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

/// Length of the STREAM nonce prefix.
pub(super) const PREFIX_LEN: usize = 19;

/// One object's STREAM state, for sealing or opening chunks in order.
pub(super) struct Stream {
    key: LessSafeKey,
    /// The prefix bytes that go into the ChaCha20 nonce.
    tail: [u8; 3],
    position: u32,
}

/// A chunk failed (authentication, or the counter ran out).
#[derive(Debug)]
pub(super) struct StreamError;

impl Stream {
    pub(super) fn new(object_key: &[u8; 32], prefix: &[u8; PREFIX_LEN]) -> Stream {
        let head: [u8; 16] = prefix[..16].try_into().expect("16 bytes");
        let mut subkey: [u8; 32] =
            chacha20::hchacha::<chacha20::R20>(&(*object_key).into(), &head.into()).into();
        let key =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a 32-byte key"));
        subkey.zeroize();
        Stream {
            key,
            tail: prefix[16..].try_into().expect("3 bytes"),
            position: 0,
        }
    }

    fn nonce(&self, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[4..7].copy_from_slice(&self.tail);
        n[7..11].copy_from_slice(&self.position.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }

    /// Refuses a chunk after the last position (as aead-stream does: the
    /// last chunk may still use it), so that no nonce is used twice.
    fn check(&self, last: bool) -> Result<(), StreamError> {
        if !last && self.position == u32::MAX {
            return Err(StreamError);
        }
        Ok(())
    }

    fn advance(&mut self, last: bool) {
        if !last {
            self.position += 1;
        }
    }

    /// Encrypts `buf` in place and appends its tag.
    pub(super) fn seal(
        &mut self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        last: bool,
    ) -> Result<(), StreamError> {
        self.check(last)?;
        self.key
            .seal_in_place_append_tag(self.nonce(last), Aad::from(aad), buf)
            .map_err(|_| StreamError)?;
        self.advance(last);
        Ok(())
    }

    /// Checks and decrypts `buf` (ciphertext and tag) in place, leaving the
    /// plain bytes.
    pub(super) fn open(
        &mut self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        last: bool,
    ) -> Result<(), StreamError> {
        let plain = self.open_slice(aad, buf, last)?;
        buf.truncate(plain);
        Ok(())
    }

    /// Checks and decrypts `buf` (ciphertext and tag) in place; returns
    /// the length of the plain bytes at its start.
    pub(super) fn open_slice(
        &mut self,
        aad: &[u8],
        buf: &mut [u8],
        last: bool,
    ) -> Result<usize, StreamError> {
        self.check(last)?;
        let plain = self
            .key
            .open_in_place(self.nonce(last), Aad::from(aad), buf)
            .map_err(|_| StreamError)?
            .len();
        self.advance(last);
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aead_stream::{DecryptorBE32, EncryptorBE32};
    use chacha20poly1305::XChaCha20Poly1305;

    /// Chunks as the object writer makes them: some full, a short last one.
    fn chunks() -> Vec<Vec<u8>> {
        vec![
            (0..4096u32).map(|i| (i % 251) as u8).collect(),
            vec![0u8; 4096],
            (0..100u32).map(|i| (i * 7) as u8).collect(),
        ]
    }

    #[test]
    fn writes_exactly_what_aead_stream_writes_and_reads_it_back() {
        let key = [0x42u8; 32];
        let prefix: [u8; PREFIX_LEN] = core::array::from_fn(|i| i as u8 * 3 + 1);
        let aad = b"the object header";
        let plain = chunks();
        let last_index = plain.len() - 1;

        let mut reference = EncryptorBE32::<XChaCha20Poly1305>::new(&key.into(), &prefix.into());
        let mut ours = Stream::new(&key, &prefix);
        let mut sealed = Vec::new();
        for (i, chunk) in plain.iter().enumerate() {
            let last = i == last_index;
            let mut a = chunk.clone();
            let mut b = chunk.clone();
            if last {
                let r = std::mem::replace(
                    &mut reference,
                    EncryptorBE32::<XChaCha20Poly1305>::new(&key.into(), &prefix.into()),
                );
                r.encrypt_last_in_place(aad, &mut a).unwrap();
            } else {
                reference.encrypt_next_in_place(aad, &mut a).unwrap();
            }
            ours.seal(aad, &mut b, last).unwrap();
            assert_eq!(a, b, "chunk {i}");
            sealed.push(b);
        }

        // The reference reads ours, and ours reads it back.
        let mut reference = DecryptorBE32::<XChaCha20Poly1305>::new(&key.into(), &prefix.into());
        let mut ours = Stream::new(&key, &prefix);
        for (i, chunk) in sealed.iter().enumerate() {
            let last = i == last_index;
            let mut a = chunk.clone();
            let mut b = chunk.clone();
            if last {
                let r = std::mem::replace(
                    &mut reference,
                    DecryptorBE32::<XChaCha20Poly1305>::new(&key.into(), &prefix.into()),
                );
                r.decrypt_last_in_place(aad, &mut a).unwrap();
            } else {
                reference.decrypt_next_in_place(aad, &mut a).unwrap();
            }
            ours.open(aad, &mut b, last).unwrap();
            assert_eq!(a, plain[i]);
            assert_eq!(b, plain[i]);
        }
    }

    #[test]
    fn tampering_order_flag_and_header_are_refused() {
        let key = [9u8; 32];
        let prefix = [5u8; PREFIX_LEN];
        let mut w = Stream::new(&key, &prefix);
        let mut first = vec![1u8; 64];
        let mut second = vec![2u8; 64];
        w.seal(b"h", &mut first, false).unwrap();
        w.seal(b"h", &mut second, true).unwrap();

        let open = |chunk: &[u8], aad: &[u8], skip: bool, last: bool| {
            let mut r = Stream::new(&key, &prefix);
            if skip {
                r.position = 1;
            }
            let mut b = chunk.to_vec();
            r.open(aad, &mut b, last)
        };
        assert!(open(&first, b"h", false, false).is_ok());
        // Out of order, a wrong last flag, another header, a flipped bit.
        assert!(open(&second, b"h", false, true).is_err());
        assert!(open(&first, b"h", false, true).is_err());
        assert!(open(&first, b"x", false, false).is_err());
        let mut bad = first.clone();
        bad[3] ^= 1;
        assert!(open(&bad, b"h", false, false).is_err());
        assert!(open(&second, b"h", true, true).is_ok());
    }
}
