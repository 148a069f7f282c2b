"""Mutation testing: deliberate bugs the test suite must catch.

Run through scripts/mutants.sh. Each mutant is one small edit (an exact text
replacement) in a scratch copy of the repository; the copy is rebuilt when the
edit touches C++, then the tests that should see the bug run. A mutant is
killed when they fail. Prints one line per mutant and exits non-zero if any
survives (or if an edit no longer applies: the list has gone stale). A mutant
in code this CPU cannot run (an AVX-512 build on an AVX2-only CPU) is reported
as not reachable here, with the CPU features it lacks, not run.

    python scripts/mutants.py --scratch DIR [--only NAME ...]
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutant:
    name: str
    path: str
    old: str
    new: str
    pytest: str = ""  # pytest arguments (run in tests/python), or ""
    ctest: str = ""  # ctest -R regex, or ""
    needs: tuple = ()  # CPU features (/proc/cpuinfo flags) without which the code never runs


AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
AVX512_BF16 = AVX512 + ("avx512_bf16",)


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


MUTANTS = [
    # C++ kernels
    Mutant(
        "kernel: sign of the sine term flipped",
        "src/ops/cpu/rotary_loop.cpp",
        "      o1 = x1 * c - x2 * s;\n      o2 = x1 * s + x2 * c;",
        "      o1 = x1 * c + x2 * s;\n      o2 = x1 * s + x2 * c;",
        pytest="test_rotary_op.py -k 'bitwise or 120_random'",
    ),
    Mutant(
        "kernel: positions off by one",
        "src/ops/cpu/rotary_tables.h",
        "(pos_data ? pos_data[p] : p) + offset)",
        "(pos_data ? pos_data[p] : p) + offset + 1)",
        pytest="test_rotary_op.py -k bitwise",
        ctest="positions, offset",
    ),
    Mutant(
        "kernel: angles in fp32 for fp64 frequencies",
        "src/ops/rotary_frontend.h",
        "return inv_freq.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;",
        "return at::kFloat;",
        pytest="test_rotary_positions_and_layouts.py -k every_pair_of_input",
    ),
    Mutant(
        "kernel: bf16 products rounded to 16 bits",
        "src/ops/cpu/rotary_row_bf16_avx512.h",
        "        o1 = _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s));",
        "        o1 = _mm512_sub_ps(high_as_float(_mm512_castps_si512(_mm512_mul_ps(x1, c))),"
        " high_as_float(_mm512_castps_si512(_mm512_mul_ps(x2, s))));",
        pytest="test_rotary_positions_and_layouts.py -k 'property or every_kernel_path'",
        needs=AVX512,
    ),
    Mutant(
        "kernel: hardware bf16 rounding without the denormal/NaN fallback",
        "src/ops/cpu/rotary_row_bf16_avx512.h",
        "  return (_mm512_fpclass_ps_mask(a, nan_or_denormal)",
        "  return true || (_mm512_fpclass_ps_mask(a, nan_or_denormal)",
        pytest="test_rotary_positions_and_layouts.py -k every_cpu_build",
        needs=AVX512_BF16,
    ),
    # The decode-attention loop
    Mutant(
        "decode: a row's length ignored (every row reads the longest's keys)",
        "src/ops/cpu/decode_attention_loop.cpp",
        "return a.causal ? std::max<int64_t>(lengths[b] - (Tq - 1 - t), 0) : lengths[b];",
        "return a.causal ? std::max<int64_t>(lengths[b] - (Tq - 1 - t), 0) : longest;",
        pytest="test_decode_attention.py -k 'h8d64 and T1 and full'",
    ),
    Mutant(
        "decode: the last key of each row left out (off-by-one length)",
        "src/ops/cpu/decode_attention_loop.cpp",
        "last = std::min(first + block, visible(b, Tq - 1));",
        "last = std::min(first + block, visible(b, Tq - 1) - 1);",
        pytest="test_decode_attention.py -k 'h8d64 and T1 and full'",
    ),
    Mutant(
        "decode: blocks merged without their max's rescale",
        "src/ops/cpu/decode_attention_loop.cpp",
        "            const float w = std::exp(part[0] - M);",
        "            const float w = 1.f;",
        pytest="test_decode_attention.py -k many_blocks",
    ),
    Mutant(
        "decode: a chunk's new max does not rescale the values summed so far",
        "src/ops/cpu/decode_attention_loop.cpp",
        "              scale_row(part + 2, factor, D);",
        "",
        pytest="test_decode_attention.py -k 'h8d64 and T1 and full'",
    ),
    Mutant(
        "decode: causal queries see the whole row",
        "src/ops/cpu/decode_attention_loop.cpp",
        "return a.causal ? std::max<int64_t>(lengths[b] - (Tq - 1 - t), 0) : lengths[b];",
        "return lengths[b];",
        pytest="test_decode_attention.py -k 'h8d64 and T3 and causal'",
    ),
    Mutant(
        "decode: a row's queries all weigh the shared value rows with the first query's weights",
        "src/ops/cpu/decode_attention_loop.cpp",
        "      const float* wi = w[i];\n      VecF a = at::vec::fmadd(VecF(wi[0])",
        "      const float* wi = w[0];\n      VecF a = at::vec::fmadd(VecF(wi[0])",
        pytest="test_decode_attention.py -k 'h8d64 and T3'",
    ),
    Mutant(
        "module: rows of different lengths written at the longest row's position",
        "src/ops/multi_head_attention.cpp",
        "    const at::Tensor at_rows = rows.unsqueeze(1) + at::arange(c10::Scalar(n_ctx), rows.options());",
        "    const at::Tensor at_rows = rows.max() + at::arange(c10::Scalar(n_ctx), rows.options()).expand_symint("
        "{rows.sym_size(0), n_ctx});",
        pytest="test_ragged_decoding.py -k 'different_lengths and float32 and sdpa and static'",
    ),
    Mutant(
        "kernel: backward reads and writes the forward's layouts",
        "src/ops/rotary_frontend.h",
        "      std::swap(layouts.in, layouts.out);",
        "",
        pytest="test_rotary_op.py -k 'backward_matches or gradcheck'",
    ),
    Mutant(
        "kernel: features past rotary_dim not copied",
        "src/ops/cpu/rotary_loop.cpp",
        "        std::copy(in + rd, in + D, row_out + rd); // features past rotary_dim pass through",
        "",
        pytest="test_rotary_positions_and_layouts.py -k 'position_ids or empty_tensors'",
    ),
    Mutant(
        "kernel: in-place variant writes a new tensor",
        "src/ops/rotary_frontend.h",
        "        in_place ? x\n",
        "        false ? x\n",
        pytest="test_rotary_positions_and_layouts.py -k 'in_place'",
    ),
    Mutant(
        "kernel: reused cos/sin tables ignore the frequencies' values",
        "src/ops/cpu/rotary_table_memo.h",
        "offset == o.offset && freq == o.freq;",
        "offset == o.offset;",
        pytest="test_rotary_positions_and_layouts.py -k reused",
    ),
    # C++ modules
    Mutant(
        "module: rotation layer dropped",
        "src/ops/multi_head_attention.cpp",
        "      heads = at::matmul(heads, rotation_matrix);",
        "      heads = heads.clone();",
        pytest="test_parity.py -k forward_parity",
    ),
    Mutant(
        "module: rotation matrix transposed",
        "src/ops/multi_head_attention.cpp",
        "      heads = at::matmul(heads, rotation_matrix);",
        "      heads = at::matmul(heads, rotation_matrix.t());",
        pytest="test_parity.py -k forward_parity",
    ),
    Mutant(
        "module: SDPA path never causal",
        "src/ops/multi_head_attention.cpp",
        "      const bool causal = has_mask && n_ctx > 1;",
        "      const bool causal = false;",
        pytest="test_parity.py -k forward_parity",
    ),
    Mutant(
        "module: SDPA path causal for a single query",
        "src/ops/multi_head_attention.cpp",
        "      const bool causal = has_mask && n_ctx > 1;",
        "      const bool causal = has_mask && n_ctx >= 1;",
        pytest="test_parity.py -k 'forward_parity or ignores_mask'",
    ),
    Mutant(
        "module: temperature applied to q only",
        "src/ops/multi_head_attention.cpp",
        "at::matmul(q * scale, k.transpose(-2, -1) * scale);",
        "at::matmul(q * scale, k.transpose(-2, -1));",
        pytest="test_parity.py -k forward_parity",
    ),
    Mutant(
        "module: cache keeps the autograd graph",
        "src/ops/multi_head_attention.cpp",
        "      key_buffer->slice_symint(1, cache_length, end).copy_(k.detach());",
        "      key_buffer->slice_symint(1, cache_length, end).copy_(k);",
        pytest="test_decoding.py -k detached",
    ),
    Mutant(
        "module: absolute positions off by one while decoding",
        "src/ops/multi_head_attention.cpp",
        "  const c10::SymInt first_query = buffered ? cache_length : query_position;",
        "  const c10::SymInt first_query = buffered ? cache_length + 1 : query_position;",
        pytest="test_decoding.py -k 'one_causal_pass or absolute_positions'",
        ctest="absolute_positions",
    ),
    Mutant(
        "module: keys rotated into their slot one position late",
        "src/ops/multi_head_attention.cpp",
        "    rotary_(heads, inv_freq, std::nullopt, offset.guard_int(__FILE__, __LINE__));",
        "    rotary_(heads, inv_freq, std::nullopt, offset.guard_int(__FILE__, __LINE__) + 1);",
        pytest="test_kv_cache.py -k slot",
    ),
    Mutant(
        "module: a static cache's unwritten steps are attended",
        "src/ops/multi_head_attention.cpp",
        ": key_index <= positions->narrow(1, -1, 1).unsqueeze(2))",
        ": key_index >= positions->narrow(1, -1, 1).unsqueeze(2))",
        pytest="test_kv_cache.py -k 'one_causal_pass and static'",
    ),
    Mutant(
        "KVCache (C++): growth drops the cached steps",
        "src/nn/kv_cache.cpp",
        "      grown.slice(1, 0, e.length).copy_(buffer->slice(1, 0, e.length));",
        "      grown.slice(1, 0, e.length).zero_();",
        pytest="test_kv_cache.py -k 'cpp and (growth or doubling)'",
    ),
    Mutant(
        "module: a beam's shared audio features broadcast wrongly",
        "src/ops/multi_head_attention.cpp",
        "t.sym_size(0) == n_batch ? t : t.expand_symint({n_batch, t.sym_size(1), n_state});",
        "t.sym_size(0) == n_batch ? t : t.narrow(1, 0, 1).expand_symint({n_batch, t.sym_size(1), n_state});",
        pytest="test_children_as_modules.py test_whisper_decoding.py -k 'batch_1 or beam'",
    ),
    Mutant(
        "KVCache (C++): reorder takes each row's neighbour",
        "src/nn/kv_cache.cpp",
        "    const at::Tensor rows = indices.to(e.key_buffer.device());",
        "    const at::Tensor rows = (indices.to(e.key_buffer.device()) + 1).remainder(e.key_buffer.size(0));",
        pytest="test_children_as_modules.py -k 'reorder and cpp'",
        ctest="reorder",
    ),
    # Weight loading
    Mutant(
        "loader: copies matching tensors before it fails on a mismatch",
        "src/serialize.cpp",
        "    if (it->second.sizes() != target.sizes()) {",
        "    if (it->second.sizes() == target.sizes()) {\n"
        "      torch::NoGradGuard g;\n"
        "      const_cast<torch::Tensor&>(target).copy_(it->second);\n"
        "    } else {",
        pytest="test_parity.py -k 'strict_and_atomic or all_or_nothing'",
    ),
    Mutant(
        "loader: a storage allocated before its record's size is checked",
        "src/weight_files/torch_save_reader.cpp",
        "        numel >= 0 && static_cast<uint64_t>(numel) <= nbytes / item &&\n"
        "            static_cast<uint64_t>(numel) * item == nbytes,",
        "        at::empty({numel}, at::TensorOptions().dtype(dtype)).defined() &&\n"
        "            static_cast<uint64_t>(numel) * item == nbytes,",
        pytest="test_weight_file_fuzzing.py -k 'does_not_hold or thousands'",
    ),
    Mutant(
        "loader: safetensors offsets not checked against the data",
        "src/weight_files/safetensors_file.cpp",
        "      entry.begin <= entry.end && entry.end <= data_bytes,",
        "      entry.begin <= entry.end,",
        pytest="test_weight_file_fuzzing.py -k safetensors_headers",
    ),
    Mutant(
        "loader: a plain value taken for a tensor",
        "src/weight_files/torch_save_reader.cpp",
        "      continue; // a plain value (number, string, bytes, None): no tensor",
        "      if (const auto* i = std::get_if<int64_t>(&v->v)) {\n"
        "        out.tensors.emplace_back(f.path.substr(std::min(prefix.size(), f.path.size())),"
        " at::scalar_tensor(*i));\n"
        "      }\n"
        "      continue;",
        pytest="test_checkpoint_files.py -k 'lightning or nested'",
    ),
    Mutant(
        "loader: a prefix matched without its dot boundary",
        "src/serialize.cpp",
        "  return prefix.empty() || prefix.back() == '.' ? prefix : prefix + \".\";",
        "  return prefix;",
        pytest="test_checkpoint_files.py -k dot_boundary",
    ),
    # Python layer
    Mutant(
        "python: train(False) ignored",
        "python/rotary_attention/_modules.py",
        "        super().train(mode)\n",
        "        super().train(True)\n",
        pytest="test_parity.py -k train_false",
    ),
    Mutant(
        "python: requires_grad_ does nothing",
        "python/rotary_attention/_modules.py",
        "            p.requires_grad_(requires_grad)\n",
        "            pass\n",
        pytest="test_parity.py -k train_false",
    ),
    Mutant(
        "python: state_dict returns attached tensors",
        "python/rotary_attention/_modules.py",
        "            out[name] = t if keep_vars else t.detach()\n",
        "            out[name] = t\n",
        pytest="test_parity.py -k train_false",
    ),
    Mutant(
        "python: a static cache decodes with positions ignored",
        "python/rotary_attention/layers.py",
        "                lengths = entry.rows(x.shape[0])\n",
        "                lengths = torch.zeros_like(entry.rows(x.shape[0]))\n",
        pytest="test_kv_cache.py -k 'one_causal_pass and static'",
    ),
    Mutant(
        "python: buffers grow without the cached steps",
        "python/rotary_attention/layers.py",
        "                grown[:, :n].copy_(getattr(entry, name)[:, :n])\n",
        "                grown[:, :n].zero_()\n",
        pytest="test_kv_cache.py -k 'module and (growth or doubling)'",
    ),
    Mutant(
        "python: nn.Module's cache never advances",
        "python/rotary_attention/layers.py",
        "                entry.length += steps\n",
        "                pass\n",
        pytest="test_parity.py -k 'whisper_hooks and module'",
    ),
    Mutant(
        "python: nn.Module ignores group_norm",
        "python/rotary_attention/layers.py",
        "            self.group_norm,\n",
        "            False,\n",
        pytest="test_parity.py -k 'group_norm and module'",
    ),
    Mutant(
        "python: fast road despite a child's forward hook",
        "python/rotary_attention/layers.py",
        "        module._forward_hooks or module._forward_pre_hooks or",
        "        module._forward_pre_hooks or",
        pytest="test_children_as_modules.py -k 'treated_children_match or one_operator_call'",
    ),
    Mutant(
        "python: fast road despite a global hook",
        "python/rotary_attention/layers.py",
        "        g._global_forward_hooks\n        or ",
        "        ",
        pytest="test_children_as_modules.py -k global",
    ),
    Mutant(
        "python: KVCache.reorder drops the last cached step",
        "python/rotary_attention/layers.py",
        "                    new[:, :n] = old[:, :n].index_select(0, rows)",
        "                    new[:, : n - 1] = old[:, : n - 1].index_select(0, rows)",
        pytest="test_children_as_modules.py test_whisper_decoding.py -k '(reorder and not cpp) or beam'",
    ),
    Mutant(
        "python: a dict kv_cache's keys are not used",
        "python/rotary_attention/layers.py",
        "        if kv_cache is not None and self.key in kv_cache:",
        "        if False:",
        pytest="test_children_as_modules.py test_whisper_decoding.py -k 'dict_kv_cache or (greedy and sdpa)'",
    ),
    Mutant(
        "python: parity weights with an orthogonal rotation",
        "python/rotary_attention/reference.py",
        "                p.copy_(torch.eye(n) + torch.randn(n, n, generator=g) * (0.5 / n ** 0.5))",
        "                p.copy_(torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0])",
        pytest="test_parity.py -k set_up",
    ),
    # The Whisper fork's decoding rules (C++)
    Mutant(
        "whisper: a timestamp may repeat the last one (segments of zero length)",
        "src/whisper/logit_filters.cpp",
        "last_was_timestamp && !penultimate_was_timestamp ? *last_timestamp : *last_timestamp + 1;",
        "*last_timestamp;",
        pytest="test_whisper_fork.py -k 'decode_gives and (greedy or beam)'",
    ),
    Mutant(
        "whisper: a beam search stops one finished candidate early",
        "src/whisper/token_search.cpp",
        "    return s.sequences.size() >= max_candidates_;",
        "    return s.sequences.size() + 1 >= max_candidates_;",
        pytest="test_whisper_fork.py -k 'decode_gives and beam'",
    ),
    Mutant(
        "whisper: the non-speech symbols are not suppressed",
        "src/whisper/decoding_task.cpp",
        "    if (non_speech) {",
        "    if (false) {",
        pytest="test_whisper_fork.py -k 'decode_gives or tokenizer'",
    ),
    Mutant(
        "whisper: the first token's blank suppression misses end of text",
        "src/whisper/logit_filters.cpp",
        "  suppressed_.push_back(tokenizer.eot());",
        "",
        pytest="test_whisper_fork.py -k 'decode_gives'",
    ),
    Mutant(
        "python: a torchao (subclass) weight sent down the fast road",
        "python/rotary_attention/layers.py",
        "            if type(m[name]) is not nn.Linear or _hooked(m[name]) or _holds_subclass_tensors(m[name]):",
        "            if type(m[name]) is not nn.Linear or _hooked(m[name]):",
        pytest="test_torchao.py",
    ),
    Mutant(
        "python: a beam's in-place KVCache.reorder leaves the last step stale",
        "python/rotary_attention/layers.py",
        "                    buffer[:, :n] = buffer[:, :n].index_select(0, rows)",
        "                    buffer[:, : n - 1] = buffer[:, : n - 1].index_select(0, rows)",
        pytest="test_children_as_modules.py test_whisper_decoding.py -k '(reorder and not cpp) or beam'",
    ),
    Mutant(
        "KVCache (C++): a beam's in-place reorder leaves the last step stale",
        "src/nn/kv_cache.cpp",
        "      const at::Tensor gathered = buffer->slice(1, 0, e.length).index_select(0, rows);",
        "      const at::Tensor gathered = buffer->slice(1, 0, e.length - 1).index_select(0, rows);\n"
        "      if (rows.size(0) == buffer->size(0)) {\n"
        "        buffer->slice(1, 0, e.length - 1).copy_(gathered);\n"
        "        continue;\n"
        "      }",
        pytest="test_children_as_modules.py test_whisper_fork.py -k '(reorder and cpp) or beam'",
        ctest="reorder",
    ),
    Mutant(
        "whisper: a beam's shared audio keys read with the rows' queries at the wrong positions",
        "src/nn/multi_head_attention.cpp",
        "(at::arange(x.size(1), x.options().dtype(at::kLong)) + query_position).repeat({x.size(0)});",
        "(at::arange(x.size(1), x.options().dtype(at::kLong)) + query_position).repeat_interleave(x.size(0));",
        pytest="test_whisper_fork.py -k 'reading_its_audio_once or (decode_gives and beam)'",
    ),
    Mutant(
        "whisper: the few-rows product drops the bias",
        "src/whisper/few_rows_linear.cpp",
        "    p.y[r * p.n + o] = sum + (p.bias != nullptr ? p.bias[o] : 0.0f);",
        "    p.y[r * p.n + o] = sum;",
        pytest="test_whisper_fork.py -k 'few_rows or (decode_gives and greedy)'",
    ),
    Mutant(
        "transcribe: a window ending on a single timestamp seeks to it, not over the window",
        "src/whisper/transcribe.cpp",
        "        single_timestamp_ending ? segment_size : (tokens[last_slice - 1] - begin) * input_stride;",
        "        false ? segment_size : (tokens[last_slice - 1] - begin) * input_stride;",
        pytest="test_transcribe.py -k 'equals_whisper and long'",
    ),
    Mutant(
        "transcribe: the prompt is kept after a window decoded above temperature 0.5",
        "src/whisper/transcribe.cpp",
        "result.temperature > 0.5",
        "result.temperature > 5.0",
        pytest="test_transcribe.py -k 'prompt_is_reset'",
    ),
    Mutant(
        "transcribe: the fallback keeps the first temperature's result",
        "src/whisper/transcribe.cpp",
        "    result = decode(inference, tokenizer, features, attempt).front();",
        "    const auto latest = decode(inference, tokenizer, features, attempt).front();\n"
        "    result = t == options.temperatures.front() ? latest : result;",
        pytest="test_transcribe.py -k 'fallback'",
    ),
    Mutant(
        "sampling: the inverse CDF draws from softmax(logits), not softmax(logits / T)",
        "src/whisper/token_search.cpp",
        "  const auto probs = at::softmax(logits.to(at::kFloat) / temperature, -1).contiguous();",
        "  const auto probs = at::softmax(logits.to(at::kFloat), -1).contiguous();",
        pytest="test_transcribe.py -k 'sampler'",
    ),
    Mutant(
        "sampling: the inverse CDF takes the token before the one that crosses the target",
        "src/whisper/token_search.cpp",
        "        if (last_block == block && cumulative > target) {\n          break;",
        "        if (last_block == block && cumulative + p[i] > target) {\n          break;",
        pytest="test_transcribe.py -k 'sampler'",
    ),
    Mutant(
        "word timestamps: the DTW path read back steps left where it should step up",
        "src/whisper/word_timing.cpp",
        "    } else if (step == 1) {\n      --i;\n    } else {\n      --j;\n    }",
        "    } else if (step == 1) {\n      --j;\n    } else {\n      --i;\n    }",
        pytest="test_word_timestamps.py -k 'dtw'",
    ),
    Mutant(
        "word timestamps: a median filter of width 5, not whisper's 7",
        "include/rotary_attention/whisper/word_timing.h",
        "    int64_t median_filter_width = 7,",
        "    int64_t median_filter_width = 5,",
        pytest="test_word_timestamps.py -k 'tiny_en_words'",
    ),
    Mutant(
        "word timestamps: the seek stays at the last timestamp, not the last word's end",
        "src/whisper/transcribe.cpp",
        "    if (last_word_end && *last_word_end > time_offset) {\n      seek = frames_at(*last_word_end);",
        "    if (last_word_end && *last_word_end > time_offset) {\n      (void)frames_at;",
        pytest="test_word_timestamps.py -k 'tiny_en_words'",
    ),
    Mutant(
        "vad: the windows' context taken from the window itself, not the one before",
        "src/whisper/voice_activity.cpp",
        "    const auto padded = at::constant_pad_nd(samples, {kContext, windows * kWindow - n});",
        "    const auto padded = at::constant_pad_nd(samples, {0, windows * kWindow - n + kContext});",
        pytest="test_voice_activity.py -k 'bit_for_bit'",
    ),
    Mutant(
        "vad: the windows' output sigmoid as one batch (the vectorized exp, not the module's)",
        "src/whisper/voice_activity.cpp",
        "        out.push_back(at::sigmoid(logits.narrow(0, i, 1)).item<float>());",
        "        out.push_back(at::sigmoid(logits).narrow(0, i, 1).item<float>());",
        pytest="test_voice_activity.py -k 'bit_for_bit'",
    ),
    Mutant(
        "decoding: a beam's shared start copied to the rows in the wrong order (repeat, not repeat_interleave)",
        "src/whisper/cached_text_decoder.cpp",
        "      wide.narrow(1, 0, length_).copy_(cache.narrow(1, 0, length_).repeat_interleave(copies, 0));",
        "      wide.narrow(1, 0, length_).copy_(cache.narrow(1, 0, length_).repeat({copies, 1, 1}));",
        pytest="test_whisper_fork.py -k 'shared_start'",
    ),
    Mutant(
        "decoding: the no-speech probability read at the last token, not the start of transcript",
        "src/whisper/decoding_task.cpp",
        "          const auto at_sot = at::softmax(logits.select(1, 0), -1);",
        "          const auto at_sot = at::softmax(logits.select(1, 1), -1);",
        pytest="test_whisper_fork.py -k 'decode_gives_whisper_decode_results_over_the_original'",
    ),
    Mutant(
        "vad: a time on a range's end maps into the next range (lower_bound for upper_bound)",
        "src/whisper/voice_activity.cpp",
        "  const auto after = std::upper_bound(range_ends_.begin(), range_ends_.end(), sample);",
        "  const auto after = std::lower_bound(range_ends_.begin(), range_ends_.end(), sample);",
        pytest="test_voice_activity.py -k 'time_map or maps_times'",
    ),
    Mutant(
        "vad: the silence before a range counted from the audio's start, not the last range's end",
        "src/whisper/voice_activity.cpp",
        "    silent += range.start - previous_end;\n    previous_end = range.end;",
        "    silent = range.start - previous_end;",
        pytest="test_voice_activity.py -k 'time_map or maps_times'",
    ),
    Mutant(
        "writers: srt timestamps with a decimal point instead of a comma",
        "src/whisper/writers.cpp",
        "cues_of(result, options, true, ',')",
        "cues_of(result, options, true, '.')",
        pytest="test_transcribe_command.py -k 'byte_equal and srt'",
    ),
    Mutant(
        "whisper: the C++ decoder's self-attention keys cached rotated at the wrong position",
        "src/whisper/cached_text_decoder.cpp",
        "      self_keys_[l].narrow(1, length_, t).copy_(a.rotate(a.key(xn), n_head_, length_));",
        "      self_keys_[l].narrow(1, length_, t).copy_(a.rotate(a.key(xn), n_head_, 0));",
        pytest="test_whisper_fork.py -k 'caches_give'",
    ),
    Mutant(
        "whisper: the C++ decoder's reorder leaves the last step stale",
        "src/whisper/cached_text_decoder.cpp",
        "      auto written = cache.narrow(1, 0, length_);",
        "      auto written = cache.narrow(1, 0, length_ - 1);",
        pytest="test_whisper_fork.py -k 'caches_give'",
    ),
    Mutant(
        "whisper: the C++ decoder's beams read another audio's keys",
        "src/whisper/cached_text_decoder.cpp",
        "    audio_keys_.push_back(c.rotate(c.key(audio_features), n_head_, 0).contiguous());",
        "    audio_keys_.push_back(c.rotate(c.key(audio_features.roll(1, 0)), n_head_, 0).contiguous());",
        pytest="test_whisper_fork.py -k 'caches_give'",
    ),
    Mutant(
        "whisper: int8 weights read without their scale",
        "src/whisper/few_rows_linear.cpp",
        "      sum *= p.scale[o];",
        "      sum *= 1.0f;",
        pytest="test_whisper_fork.py -k 'few_rows or int8'",
    ),
    Mutant(
        "whisper: the second output of a pair computed from the first's weights",
        "src/whisper/few_rows_linear.cpp",
        "    const W* v = w + half * k;",
        "    const W* v = w;",
        pytest="test_whisper_fork.py -k 'few_rows'",
    ),
    Mutant(
        "python: the rotated cross-attention keys read with the queries at the positions seen so far",
        "python/rotary_attention/layers.py",
        "        query_position = entry.queries if entry is not None and self.absolute_positions else 0",
        "        query_position = entry.queries if entry is not None else 0",
        pytest="test_whisper_decoding.py -k 'greedy or beam'",
    ),
]


def run(cmd, cwd, env=None, log=None):
    with open(log, "a") if log else open(os.devnull, "w") as out:
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--only", nargs="*", help="names (substrings) of the mutants to run")
    args = parser.parse_args()
    scratch = os.path.abspath(args.scratch)
    src, build, pkg, log = (os.path.join(scratch, d) for d in ("src", "build", "pkg", "mutants.log"))
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]

    # A scratch copy of the tracked files, built once through setup.py (CPU only:
    # the mutants are checked by CPU tests, and the CUDA kernel is slow to rebuild).
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # new files too
    files = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(pkg, ignore_errors=True)  # pip --target does not replace an existing package
    for f in (f for f in files if os.path.exists(os.path.join(ROOT, f))):
        os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
        # copyfile, not copy2: fresh times, so the build never takes a mutant's
        # object file from an earlier run for up to date.
        shutil.copyfile(os.path.join(ROOT, f), os.path.join(src, f))
        shutil.copymode(os.path.join(ROOT, f), os.path.join(src, f))
    env = dict(
        os.environ, RA_BUILD_DIR=build, RA_CMAKE_ARGS="-DRA_BUILD_TESTS=ON -DRA_BUILD_EXAMPLES=ON -DRA_WITH_CUDA=OFF"
    )
    print(f"== building the scratch copy in {build} (log: {log})", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--target", pkg, src]
    if run(pip, src, env, log) != 0:
        sys.exit(f"the unmutated scratch copy does not build: see {log}")
    test_env = dict(os.environ, PYTHONPATH=pkg, RA_BUILD_DIR=build)

    def rebuild():
        if run(["cmake", "--build", build], src, env, log) != 0:
            return False
        with open(os.path.join(build, "python_package_files.txt")) as f:
            built = [line.strip() for line in f if line.strip()]  # _C, the libraries, rotary-whisper
        for path in built:
            folder = "bin" if os.path.basename(path) == "rotary-whisper" else ""
            shutil.copy(path, os.path.join(pkg, "rotary_attention", folder, os.path.basename(path)))
        return True

    def tests_pass(m):
        ok = True
        if m.pytest:
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"] + shlex.split(m.pytest)
            ok &= run(cmd, os.path.join(src, "tests", "python"), test_env, log) == 0
        if m.ctest:
            ok &= run(["ctest", "--test-dir", build, "-R", m.ctest], src, env, log) == 0
        return ok

    # A kill means something only if the same tests pass without the mutant.
    for selection in sorted({(m.pytest, m.ctest) for m in mutants}):
        if not tests_pass(Mutant("", "", "", "", *selection)):
            sys.exit(f"the tests {selection} fail on the unmutated copy: see {log}")
    print("== every test selection passes on the unmutated copy", flush=True)

    survived, stale, unreachable = [], [], {}
    binary_mutated = False  # the built library holds a restored C++ mutant
    flags = cpu_flags()
    for m in mutants:
        lacking = [f for f in m.needs if f not in flags]
        if lacking:
            unreachable[m.name] = lacking
            print(f"NOT HERE  {m.name}: this CPU lacks {', '.join(lacking)}, so the code never runs", flush=True)
            continue
        path = os.path.join(src, m.path)
        with open(path) as f:
            pristine = f.read()
        if pristine.count(m.old) != 1:
            stale.append(m.name)
            print(f"STALE     {m.name}: the text to replace is not in {m.path} exactly once", flush=True)
            continue
        start = time.time()
        python_only = m.path.startswith("python/rotary_attention/")
        if python_only and binary_mutated:
            rebuild()
            binary_mutated = False
        with open(path, "w") as f:
            f.write(pristine.replace(m.old, m.new))
        if python_only:
            shutil.copyfile(path, os.path.join(pkg, "rotary_attention", os.path.basename(m.path)))
            built = True
        else:
            built = rebuild()
            binary_mutated = True
        killed = built and not tests_pass(m)
        with open(path, "w") as f:
            f.write(pristine)
        if python_only:
            shutil.copyfile(path, os.path.join(pkg, "rotary_attention", os.path.basename(m.path)))
        if not built:  # a mutant that does not compile tests nothing
            stale.append(m.name)
            how = "NO BUILD"
        else:
            how = "killed" if killed else "SURVIVED"
            if not killed:
                survived.append(m.name)
        tests = m.pytest + (" | ctest -R " + m.ctest if m.ctest else "")
        print(f"{how:9} {m.name}  [{tests}] {time.time() - start:.0f} s", flush=True)
    if binary_mutated:
        rebuild()  # leave the scratch build unmutated
    killed_count = len(mutants) - len(survived) - len(stale) - len(unreachable)
    missing = sorted({f for lacking in unreachable.values() for f in lacking})
    print(
        f"== {killed_count} of {len(mutants) - len(unreachable)} mutants reachable on this CPU killed"
        + (f"; survived: {survived}" if survived else "")
        + (f"; stale or not building: {stale}" if stale else "")
        + (
            f"; {len(unreachable)} not reachable on this CPU (it lacks {', '.join(missing)}): {list(unreachable)}"
            if unreachable
            else ""
        )
    )
    sys.exit(1 if survived or stale else 0)


if __name__ == "__main__":
    main()
