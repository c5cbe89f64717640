import os
import tempfile

import pytest

# Eight fake CPU devices for the data-parallel tests; set before JAX initialises its backend.
# XLA's CPU compiles dominate this suite (an Inception train step takes 1-2 minutes at the default
# LLVM level); level 0 compiles about a third faster and computes the same operations.
TEST_XLA_OPT = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_OPT}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests build the same programs (every `train_and_evaluate` call re-traces its steps); JAX's
# persistent compilation cache, shared by the xdist workers and the subprocess runs, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "inception_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Importing torchvision or timm after TensorFlow segfaults (triton's native module, imported by
# torch._dynamo, crashes once TensorFlow is loaded; TF 2.21, torch 2.14); the other order is fine.
# Collection order alone used to decide it, so `pytest tests/test_data.py tests/test_bench.py` crashed.
try:
    import torchvision  # noqa: F401
except ImportError:  # the references are a test extra; without them their tests skip
    pass


# Tests of 15 s or more in the suite's timings (2026-12-05) that the quick tier (`-m "not slow"`) leaves
# out although they are not end-to-end runs: each family keeps a parity test at a small size there, and
# these are the larger sizes, the second kernel form and the real-file Keras conversions. Node-id prefixes.
HEAVY = (
    "tests/test_convert_keras.py::test_inception_v3_keras_archive_299",
    "tests/test_convert_keras.py::test_inception_resnet_v2_",
    "tests/test_convert_keras.py::test_inception_v3_legacy_model_h5",
    "tests/test_inception_v4.py::test_float64_logits_and_stages_match_timm[299",
    "tests/test_inception_v4.py::test_float64_logits_and_stages_match_timm[107-xla]",
    "tests/test_inception_v4.py::test_aux_head_runs_in_train_mode_and_at_the_minimum_size",
    "tests/test_inception_resnet.py::test_float64_logits_and_stages_match_timm[299",
    "tests/test_models_common.py::test_remat_computes_the_same_loss_and_gradients",
    "tests/test_googlenet.py::test_eval_logits_match_torchvision[224]",
    "tests/test_googlenet.py::test_init_outputs_and_dropout",
    "tests/test_googlenet.py::test_train_mode_aux_heads_match_torchvision[auto]",
    "tests/test_inception_v3.py::test_timm_parity_eval_299",
    "tests/test_inception_v3.py::test_aux_head_train_mode_matches_timm[xla]",
    "tests/test_bn_inception.py::test_outputs_train_mode_and_dropout",
    "tests/test_fid.py::test_cli_matches_pytorch_fid_end_to_end",
    "tests/test_fid.py::test_mixed_size_folder_features_match_pytorch_fid_per_image",
    "tests/test_data.py::test_train_batches_are_the_same_for_any_row_split_and_resume_exactly[False]",
    "tests/test_stacking.py::test_weight_files_load_into_either_layout",
    "tests/test_stacking.py::test_the_trainer_loads_init_from_weights_of_the_other_layout",
    "tests/test_costs.py::test_the_cli_prints_markdown_and_rejects_unknown_models",
    "tests/test_reliability.py::test_cli_exit_status_in_a_real_process",
    "tests/test_multihost.py::test_a_peer_that_never_starts_is_a_clear_error_not_a_hang",
    "tests/test_bench.py::test_tiny_input_benchmark_times_the_training_pipeline",
    "tests/test_train.py::test_the_loop_dispatches_steps_without_waiting_for_them",
    "tests/test_evaluate.py::test_every_example_once_and_the_numbers_of_a_direct_computation[1001",
    "tests/test_predict.py::test_module_entry_point",
    # 7-30 s each in the quick tier's own timings: the second size or form of a family's parity test,
    # the largest variants' contract checks, and the paper-switch structure tests.
    "tests/test_inception_resnet.py::test_float64_logits_and_stages_match_timm[107-auto]",
    "tests/test_inception_resnet.py::test_float32_with_other_residual_scales_matches_timm",
    "tests/test_inception_resnet.py::test_ir1_residual_scales_change_the_output",
    "tests/test_inception_resnet.py::test_ir2_aux_head_in_train_mode",
    "tests/test_models_common.py::test_call_contract[inception_resnet_v2]",
    "tests/test_models_common.py::test_call_contract[inception_v4]",
    "tests/test_models_common.py::test_report_prints_every_variant_as_json",
    "tests/test_models_common.py::test_avg_pool_semantics_is_a_switch_on_every_padded_pool_family[inception_resnet_v2]",
    "tests/test_models_common.py::test_depths_add_or_drop_whole_blocks",
    "tests/test_models_common.py::test_parameter_counts_and_gmacs_match_the_references[inception_resnet_v2]",
    "tests/test_googlenet.py::test_naive_modules_explode_the_width",
    "tests/test_googlenet.py::test_tf_padding_is_same_everywhere",
    "tests/test_googlenet.py::test_train_mode_aux_heads_match_torchvision[xla]",
    "tests/test_inception_v3.py::test_inception_v2_runs_at_299",
    "tests/test_bn_inception.py::test_minimum_input_size",
    "tests/test_bn_inception.py::test_same_padding_everywhere",
    "tests/test_convert_keras.py::test_include_top_false_gives_the_pooled_features",
    # The only Keras test left in the quick tier paid the whole Keras reference script (~30 s) alone.
    "tests/test_convert_keras.py::test_rebuilt_layer_order_is_keras_model_layers_order",
)


# The longest tests in the suite's timings (2026-12-06, 20 min run), longest first: they start first, so
# the finish is evened out by short tests instead of waiting on one of these. Node-id prefixes.
LONGEST = (
    "tests/test_multihost.py::test_a_pair_survives_sigterm",
    "tests/test_notebook.py::test_quickstart_notebook_runs",
    "tests/test_sweep.py::test_a_real_sweep_end_to_end",
    "tests/test_train.py::test_a_straight_run_resumes_bitwise",
    "tests/test_reliability.py::test_killed_and_resumed_runs",
    "tests/test_train.py::test_configs_train_two_steps_and_evaluate[inception_v3]",
    "tests/test_convert_keras.py::test_inception_v3_keras_archive_299",
    "tests/test_train.py::test_nonfinite_loss_stops",
)


def _rank(item) -> tuple[int, bool]:
    longest = next((i for i, prefix in enumerate(LONGEST) if item.nodeid.startswith(prefix)), len(LONGEST))
    return longest, item.get_closest_marker("slow") is None


def pytest_collection_modifyitems(config, items):
    """Marks the HEAVY tests slow, then orders the suite: the LONGEST tests, the other slow ones, the rest.
    xdist's `worksteal` mode (scripts/test.sh) hands each worker a contiguous half of this order and lets
    an idle worker take over part of the other's queue, so the short tests at the end even out the finish.
    (`load` mode sent every slow test to one worker, which ran 200 s after the other went idle; with slow
    tests in file order the longest started last and the other worker idled 1-3 min.)"""
    for item in items:
        if item.nodeid.startswith(HEAVY):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_rank)
