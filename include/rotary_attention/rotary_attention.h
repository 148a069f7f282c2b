#pragma once
// Umbrella header of the rotary_attention library.

#include "rotary_attention/nn/kv_cache.h"
#include "rotary_attention/nn/multi_head_attention.h"
#include "rotary_attention/nn/options.h"
#include "rotary_attention/nn/rotary_embedding.h"
#include "rotary_attention/nn/rotation_layer.h"
#include "rotary_attention/ops/decode_attention.h"
#include "rotary_attention/ops/multi_head_attention.h"
#include "rotary_attention/ops/rotary.h"
#include "rotary_attention/serialize.h"
