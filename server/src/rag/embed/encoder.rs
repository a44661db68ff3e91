//! The local model's forward pass (BERT, as in `candle_transformers::models::bert`) over
//! packed sequences: the texts of a pass are laid end to end, so no row is padding.
//!
//! The per-token layers (the projections, the feed-forward, the layer norms) run once over all
//! the pass's tokens; only attention looks at one sequence at a time, grouped by length. The
//! padded model computed every layer for the padding too (a batch of questions is padded to its
//! longest), and its exact GELU called the scalar `erff` per value (14 % of a batched pass);
//! here GELU uses a branch-free rational approximation of erf, accurate to float precision, in
//! one pass with the bias. Measured (`chat-bench --scenarios model`, BENCHMARKS.md): a pass of
//! 32 questions 11.1 → 5.4 ms of CPU per question, a lone question 17.8 → 15.1 ms (medians).
//! `tests::same_vectors_as_the_padded_reference` holds the vectors to those of
//! `candle_transformers`' model.

use candle_core::{CpuStorage, Device, Layout, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

/// One encoder layer; the query, key and value projections are one matrix product.
struct Layer {
    /// The query's, key's and value's outputs side by side, the query's scaled by
    /// 1/√(head size).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    /// (intermediate, hidden), as `Linear` keeps it; its bias is added with the activation.
    intermediate: Tensor,
    intermediate_bias: Tensor,
    /// The same bias, for [`BiasGelu`].
    intermediate_bias_values: Vec<f32>,
    out: Linear,
    out_norm: LayerNorm,
}

/// BERT's encoder for sentence embeddings: mean-pooled hidden states of packed sequences.
pub struct PackedBert {
    word: Tensor,
    position: Tensor,
    /// Every token is of type 0.
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    hidden: usize,
    activation: HiddenAct,
    device: Device,
}

impl PackedBert {
    /// Loads the weights `candle_transformers`' `BertModel` would (with or without a `bert.`
    /// prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp(config.model_type.as_deref().unwrap_or("bert"))
        };
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_size = hidden / heads;
        let emb = vb.pp("embeddings");
        let word = emb.get((config.vocab_size, hidden), "word_embeddings.weight")?;
        let position = emb.get(
            (config.max_position_embeddings, hidden),
            "position_embeddings.weight",
        )?;
        let token_type = emb
            .get(
                (config.type_vocab_size, hidden),
                "token_type_embeddings.weight",
            )?
            .get(0)?;
        let embedding_norm =
            candle_nn::layer_norm(hidden, config.layer_norm_eps, emb.pp("LayerNorm"))?;
        let scale = 1.0 / (head_size as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let vb = vb.pp(format!("encoder.layer.{i}"));
            let attention = vb.pp("attention");
            let own = attention.pp("self");
            let projection = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
                let p = own.pp(name);
                Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
            };
            let (qw, qb) = projection("query")?;
            let (kw, kb) = projection("key")?;
            let (vw, vbias) = projection("value")?;
            let qkv = Linear::new(
                Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                Some(Tensor::cat(&[(qb * scale)?, kb, vbias], 0)?),
            );
            let attention_out = candle_nn::linear(hidden, hidden, attention.pp("output.dense"))?;
            let attention_norm = candle_nn::layer_norm(
                hidden,
                config.layer_norm_eps,
                attention.pp("output.LayerNorm"),
            )?;
            let inter = vb.pp("intermediate.dense");
            let intermediate = inter.get((config.intermediate_size, hidden), "weight")?;
            let intermediate_bias = inter.get(config.intermediate_size, "bias")?;
            let intermediate_bias_values = intermediate_bias.to_vec1::<f32>()?;
            let out = candle_nn::linear(config.intermediate_size, hidden, vb.pp("output.dense"))?;
            let out_norm =
                candle_nn::layer_norm(hidden, config.layer_norm_eps, vb.pp("output.LayerNorm"))?;
            layers.push(Layer {
                qkv,
                attention_out,
                attention_norm,
                intermediate,
                intermediate_bias,
                intermediate_bias_values,
                out,
                out_norm,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            heads,
            head_size,
            hidden,
            activation: config.hidden_act,
            device: vb.device().clone(),
        })
    }

    /// The mean of each sequence's last hidden states (not normalised), in the order given.
    /// An empty sequence gets a zero vector.
    pub fn embed(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut out = vec![vec![0f32; self.hidden]; sequences.len()];
        // Longest first: sequences of one length lie together, so their attention is one
        // batched product.
        let mut order: Vec<usize> = (0..sequences.len())
            .filter(|&i| !sequences[i].is_empty())
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
        let total: usize = order.iter().map(|&i| sequences[i].len()).sum();
        if total == 0 {
            return Ok(out);
        }
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        // (rows, length) of each run of equal lengths.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for &i in &order {
            let len = sequences[i].len();
            ids.extend_from_slice(sequences[i]);
            positions.extend(0..len as u32);
            match groups.last_mut() {
                Some((rows, l)) if *l == len => *rows += 1,
                _ => groups.push((1, len)),
            }
        }
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let x = self
            .word
            .index_select(&ids, 0)?
            .add(&self.position.index_select(&positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &groups)?;
        }
        let states = x.flatten_all()?.to_vec1::<f32>()?;
        let mut rows = states.chunks_exact(self.hidden);
        for &i in &order {
            let len = sequences[i].len();
            let sum = &mut out[i];
            for row in rows.by_ref().take(len) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
            }
            sum.iter_mut().for_each(|s| *s /= len as f32);
        }
        Ok(out)
    }

    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        groups: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let qkv = layer.qkv.forward(x)?; // (tokens, 3 × hidden)
        let mut contexts = Vec::with_capacity(groups.len());
        let mut start = 0;
        for &(rows, len) in groups {
            let part = qkv
                .narrow(0, start, rows * len)?
                .reshape((rows, len, 3, self.heads, self.head_size))?
                .permute((2, 0, 3, 1, 4))? // (3, rows, heads, len, head size)
                .contiguous()?;
            let (q, k, v) = (part.get(0)?, part.get(1)?, part.get(2)?);
            let weights = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
            let context = weights
                .matmul(&v)? // (rows, heads, len, head size)
                .permute((0, 2, 1, 3))?
                .contiguous()?
                .reshape((rows * len, self.hidden))?;
            contexts.push(context);
            start += rows * len;
        }
        let context = if contexts.len() == 1 {
            contexts.remove(0)
        } else {
            Tensor::cat(&contexts, 0)?
        };
        let attended = layer
            .attention_norm
            .forward(&layer.attention_out.forward(&context)?.add(x)?)?;
        let inner = attended.matmul(&layer.intermediate.t()?)?;
        let activated = match self.activation {
            HiddenAct::Gelu => {
                inner.inplace_op1(&BiasGelu(&layer.intermediate_bias_values))?;
                inner
            }
            HiddenAct::GeluApproximate => inner.broadcast_add(&layer.intermediate_bias)?.gelu()?,
            HiddenAct::Relu => inner.broadcast_add(&layer.intermediate_bias)?.relu()?,
        };
        layer
            .out_norm
            .forward(&layer.out.forward(&activated)?.add(&attended)?)
    }
}

/// Adds the bias to each row and applies the exact GELU (x·Φ(x)), in place.
struct BiasGelu<'a>(&'a [f32]);

impl candle_core::InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("bias-gelu: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-gelu: the input must be contiguous");
        };
        let width = self.0.len();
        if width == 0 || (end - start) % width != 0 {
            candle_core::bail!("bias-gelu: rows of {width} expected");
        }
        for row in values[start..end].chunks_exact_mut(width) {
            for (v, b) in row.iter_mut().zip(self.0) {
                *v = gelu(*v + b);
            }
        }
        Ok(())
    }
}

/// x·Φ(x) = x/2 · (1 + erf(x/√2)).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Numerator (odd, from x¹³ down to x) and denominator (even, from x⁸ down to 1) of erf for
/// floats on [-4, 4]: Eigen's and XLA's approximation; beyond ±4 erf is ±1 in single precision.
const ERF_P: [f64; 7] = [
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
];
const ERF_Q: [f64; 5] = [
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
];

/// erf(x) for f32, branch-free so the loop above is vectorised.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[0] as f32;
    for c in &ERF_P[1..] {
        p = p * x2 + *c as f32;
    }
    let mut q = ERF_Q[0] as f32;
    for c in &ERF_Q[1..] {
        q = q * x2 + *c as f32;
    }
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_candles_exact_gelu() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 / 500.0).collect();
        let reference = Tensor::from_slice(&xs, xs.len(), &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let worst = xs
            .iter()
            .zip(&reference)
            .map(|(&x, &r)| (gelu(x) - r).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "largest difference {worst}");
        // And the in-place op adds the bias first.
        let t = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0], (2, 2), &Device::Cpu).unwrap();
        t.inplace_op1(&BiasGelu(&[0.5, 1.0])).unwrap();
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, want) in got.iter().zip([gelu(1.0), gelu(0.0), gelu(2.5), gelu(1.0)]) {
            assert!((g - want).abs() < 1e-7, "{got:?}");
        }
    }

    /// The vectors of `candle_transformers`' `BertModel` for the same texts, padded to the
    /// longest with an attention mask and mean-pooled over it (what the server did before).
    #[test]
    fn same_vectors_as_the_padded_reference() {
        use candle_transformers::models::bert::BertModel;
        let dir = std::env::var_os("MODEL_DIR").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2"),
            std::path::PathBuf::from,
        );
        assert!(
            dir.join("model.safetensors").is_file(),
            "the local model is missing in {} (scripts/setup.sh fetches it)",
            dir.display()
        );
        let config: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                candle_core::DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let packed = PackedBert::load(vb.clone(), &config).unwrap();
        let reference = BertModel::load(vb, &config).unwrap();
        let long = "Refunds are issued to the original payment method within five working days \
                    of the return reaching our warehouse; store credit is immediate. "
            .repeat(6);
        let texts = [
            "How do I reset my password?",
            "Where is my parcel?",
            "Can I change the delivery address after ordering?",
            "How do I reset my password?",
            long.as_str(),
            "Hi",
            "What payment methods do you accept for business accounts in Europe?",
        ];
        let encodings = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
        let sequences: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        assert!(sequences.iter().map(|s| s.len()).max().unwrap() > 100);
        let got = packed.embed(&sequences).unwrap();

        let width = sequences.iter().map(|s| s.len()).max().unwrap();
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for s in &sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(0u32, width - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, width - s.len()));
        }
        let rows = sequences.len();
        let ids = Tensor::from_vec(ids, (rows, width), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (rows, width), &Device::Cpu).unwrap();
        let hidden = reference
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (i, s) in sequences.iter().enumerate() {
            let mut want = vec![0f32; 384];
            for row in &hidden[i][..s.len()] {
                for (w, v) in want.iter_mut().zip(row) {
                    *w += v / s.len() as f32;
                }
            }
            let worst = want
                .iter()
                .zip(&got[i])
                .map(|(w, g)| (w - g).abs())
                .fold(0f32, f32::max);
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                worst < 1e-4 * norm.max(1.0),
                "text {i}: largest difference {worst} (norm {norm})"
            );
        }
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        // Equal texts get equal vectors, wherever they sit in the pack.
        assert!(close(&got[0], &got[3]));
        // An empty sequence gets zeros and leaves the others alone.
        let with_empty = packed.embed(&[&[], sequences[1]]).unwrap();
        assert!(with_empty[0].iter().all(|&v| v == 0.0));
        assert!(close(&with_empty[1], &got[1]));
    }
}
