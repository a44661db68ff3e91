//! The PostgreSQL embedding cache, keyed by (provider, model, dimension, content hash).

use std::collections::HashMap;

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

/// Identifies the vector space a cached vector belongs to.
#[derive(Debug, Clone)]
pub struct CacheKey<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub dimension: usize,
}

/// SHA-256 (hex) of the exact text that is embedded.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Cached vectors for the given hashes (missing ones are simply absent).
pub async fn lookup(
    pool: &Pool,
    key: &CacheKey<'_>,
    hashes: &[String],
) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT content_hash, vector FROM embedding_cache \
             WHERE provider = $1 AND model = $2 AND dimension = $3 AND content_hash = ANY($4)",
        )
        .await?;
    let dimension = i32::try_from(key.dimension)?;
    let rows = client
        .query(&stmt, &[&key.provider, &key.model, &dimension, &hashes])
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let hash: String = row.get(0);
        let bytes: Vec<u8> = row.get(1);
        let vector = from_bytes(&bytes);
        if vector.len() == key.dimension {
            out.insert(hash, vector);
        }
    }
    Ok(out)
}

/// Stores vectors; rows another process stored meanwhile are kept as they are.
pub async fn store(
    pool: &Pool,
    key: &CacheKey<'_>,
    entries: &[(String, Vec<f32>)],
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO embedding_cache (provider, model, dimension, content_hash, vector) \
             SELECT $1, $2, $3, h, v FROM unnest($4::text[], $5::bytea[]) AS t(h, v) \
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let dimension = i32::try_from(key.dimension)?;
    let hashes: Vec<&str> = entries.iter().map(|(h, _)| h.as_str()).collect();
    let vectors: Vec<Vec<u8>> = entries.iter().map(|(_, v)| to_bytes(v)).collect();
    client
        .execute(
            &stmt,
            &[&key.provider, &key.model, &dimension, &hashes, &vectors],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let v = vec![0.25_f32, -1.5, 3.0e-7];
        assert_eq!(from_bytes(&to_bytes(&v)), v);
    }

    #[test]
    fn hash_is_stable_hex_sha256() {
        assert_eq!(
            content_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
