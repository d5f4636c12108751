"""Decode modes: static (fixed-shape steps) and cuda_graph decode exactly as dynamic does."""
import numpy as np
import pytest
import torch

from conftest import random_frames
from svlm_ros.config import CachePolicy, EngineConfig, GenerationConfig
from svlm_ros.engine.decoding import resolve_decode_mode
from svlm_ros.engine.kv_cache import StreamingKVCache
from svlm_ros.engine.session import StreamSession


def stream(model, decode_mode, rng, windows=6, initial_capacity=16):
    """Greedy stream with an unlimited cache that starts tiny, so its buffers grow while decoding."""
    config = EngineConfig(cache=CachePolicy.unlimited())
    config.generation.do_sample = False
    config.generation.max_new_tokens = 7
    config.generation.ignore_end_of_turn = True
    config.generation.decode_mode = decode_mode
    session = StreamSession(model, config)
    session.cache = StreamingKVCache(len(session.cache.layers), session.cache.inv_freq, initial_capacity)
    results = [session.step(random_frames(rng), float(i), float(i + 1)) for i in range(windows)]
    answer = session.ask("What is on the table?", max_new_tokens=5)
    return session, results, answer


def assert_same_stream(first, second):
    (a, a_results, a_answer), (b, b_results, b_answer) = first, second
    assert [r.text for r in a_results] == [r.text for r in b_results]
    assert a_answer.text == b_answer.text
    assert a.cache_tokens == b.cache_tokens == a.table.length
    assert torch.allclose(a.last_logits, b.last_logits, atol=1e-4)
    for a_layer, b_layer in zip(a.cache.layers, b.cache.layers, strict=True):
        assert torch.allclose(a_layer.keys, b_layer.keys, atol=1e-4)
        assert torch.allclose(a_layer.values, b_layer.values, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_eager_model():
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.models import load_model

    return load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32", attn_implementation="eager"))


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_eager_model"], ids=["sdpa", "eager"])
def test_static_decoding_equals_dynamic_while_the_buffers_grow(model_fixture, request):
    tiny_model = request.getfixturevalue(model_fixture)
    dynamic = stream(tiny_model, "dynamic", np.random.default_rng(5))
    static = stream(tiny_model, "static", np.random.default_rng(5))
    assert static[0].cache.capacity > 16, "the buffers did not grow during the stream"
    assert static[0].decode_mode == "static" and dynamic[0].decode_mode == "dynamic"
    assert_same_stream(dynamic, static)


def test_decode_mode_is_resolved_per_device_and_checked():
    assert resolve_decode_mode("auto", torch.device("cpu")) == "dynamic"
    assert resolve_decode_mode("auto", torch.device("cuda")) == "cuda_graph"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_decode_mode("cuda_graph", torch.device("cpu"))
    with pytest.raises(ValueError, match="decode_mode must be one of"):
        GenerationConfig(decode_mode="fast").validate()
    # Flash kernels take no slot mask: auto decodes dynamic, static modes are refused with the fix.
    assert resolve_decode_mode("auto", torch.device("cuda"), "flash_attention_2") == "dynamic"
    with pytest.raises(ValueError, match="set attn_implementation to sdpa"):
        resolve_decode_mode("cuda_graph", torch.device("cuda"), "flash_attention_2")
    assert resolve_decode_mode("static", torch.device("cpu"), "eager") == "static"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_graph_decoding_equals_static_on_the_gpu(tiny_model):
    tiny_model.model.to("cuda")
    try:
        graph = stream(tiny_model, "cuda_graph", np.random.default_rng(5))
        static = stream(tiny_model, "static", np.random.default_rng(5))
    finally:
        tiny_model.model.to("cpu")
    assert graph[0].decoder._graph is not None, "the decode step was not captured"
    assert_same_stream(static, graph)


def test_the_static_step_reads_no_tensor_value_back_to_the_host():
    """What a CUDA graph needs: the step runs on meta tensors, which hold no data, so any
    .item(), bool(tensor), .tolist() or boolean-mask indexing in it would raise here."""
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.decoding import StaticDecoder
    from svlm_ros.engine.models import load_model

    loaded = load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32"))
    model = loaded.model.to("meta")
    text = loaded.text_config
    language_model = model.get_decoder()
    cache = StreamingKVCache(text.num_hidden_layers, language_model.rotary_emb.inv_freq)
    prefilled = torch.zeros(1, text.num_key_value_heads, 10, text.hidden_size // text.num_attention_heads,
                            device="meta")
    for layer in cache.layers:
        layer.update(prefilled, prefilled)
    decoder = StaticDecoder(language_model, model.get_output_embeddings(), model.get_input_embeddings(), torch.device("meta"),
                            use_cuda_graph=False)
    with torch.inference_mode():
        decoder.begin(cache, position=10, budget=4)
        for _ in range(3):
            logits = decoder.step(torch.zeros(1, dtype=torch.long, device="meta"))
        decoder.end(3)
    assert logits.shape == (text.vocab_size,) and logits.device.type == "meta"
    assert cache.get_seq_length() == 13


def test_a_failed_graph_capture_falls_back_to_static_with_a_warning(tiny_model, rng, caplog):
    """Here the capture fails because there is no CUDA; any failure takes the same path."""
    config = EngineConfig()
    config.generation.do_sample = False
    config.generation.decode_mode = "static"
    session = StreamSession(tiny_model, config)
    session.decoder.use_cuda_graph = True  # as resolve_decode_mode sets it for cuda_graph on a GPU
    reference = StreamSession(tiny_model, config)
    with caplog.at_level("WARNING", logger="svlm_ros.engine.decoding"):
        result = session.step(random_frames(rng), 0.0, 1.0)
    assert "CUDA graph capture failed" in caplog.text and "decoding without a graph" in caplog.text
    assert session.decode_mode == "static"
    expected = reference.step(random_frames(np.random.default_rng(1234)), 0.0, 1.0)
    assert result.text == expected.text and session.cache_tokens == session.table.length
