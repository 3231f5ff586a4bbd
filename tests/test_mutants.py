"""Named breakages of the code, and the test that must fail against each (issue 19).

Every claim a test backs (README, BENCHMARKS.md) is only trusted once that test has been seen
failing against code that breaks the claim. Each mutant below is applied to a fresh copy of the
repository (one `old` -> `new` replacement in one file) and its tests are run there; the mutant
passes when they fail. A mutant whose `old` text is gone fails too: update it with the code.

    make mutants          # all of them (CI runs this after `make test`)
    .venv/bin/python -m pytest -m mutants tests/test_mutants.py -k clip
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file to break, relative to the repository
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple[str, ...]  # node ids that must fail


T = "tests/"
MUTANTS = (
    # Training (README: DDP, accumulation, bf16, resume; BENCHMARKS: streaming)
    Mutant(
        "ddp_gradients_not_synced",
        "src/sdlab/train.py",
        "with accelerator.accumulate(denoiser), accelerator.autocast():",
        "with accelerator.no_sync(denoiser), accelerator.autocast():",
        (T + "test_train_scale.py::test_two_gloo_processes_follow_one_process_with_twice_the_batch",),
    ),
    Mutant(
        "optimizer_steps_every_micro_batch",
        "src/sdlab/train.py",
        "with accelerator.accumulate(denoiser), accelerator.autocast():",
        "with accelerator.autocast():",
        (T + "test_train_scale.py::test_bf16_accumulation_and_checkpointing_step_the_optimizer_once_per_update",),
    ),
    Mutant(
        "mixed_precision_ignored",
        "src/sdlab/train.py",
        "        mixed_precision=cfg.mixed_precision,",
        '        mixed_precision="no",',
        (T + "test_train_scale.py::test_bf16_accumulation_and_checkpointing_step_the_optimizer_once_per_update",),
    ),
    Mutant(
        "gradient_checkpointing_param_ignored",
        "src/sdlab/train.py",
        "    if cfg.gradient_checkpointing:\n        denoiser.enable_gradient_checkpointing()",
        "    if cfg.gradient_checkpointing:\n        pass",
        (T + "test_train_scale.py::test_bf16_accumulation_and_checkpointing_step_the_optimizer_once_per_update",),
    ),
    Mutant(
        "flipped_view_never_drawn",
        "src/sdlab/train.py",
        "view = torch.randint(views, (size,), generator=generator)",
        "view = torch.zeros(size, dtype=torch.long)",
        (T + "test_train.py::test_sampled_store_with_flipped_views_draws_both_views",),
    ),
    Mutant(
        "resume_ignores_checkpoints",
        "src/sdlab/train.py",
        "    checkpoint = resumable_checkpoint(run_dir)\n"
        "    if checkpoint is not None:\n        accelerator.load_state",
        "    checkpoint = None\n    if checkpoint is not None:\n        accelerator.load_state",
        (T + "test_train_scale.py::test_kill_9_mid_epoch_resumes_to_the_exact_weights_and_step",),
    ),
    Mutant(
        "epoch_draws_rows_with_replacement",
        "src/sdlab/stream.py",
        "permutation = _rng(self.seed, 104_729, epoch, window).permutation(count)",
        "permutation = _rng(self.seed, 104_729, epoch, window).integers(0, count, count)",
        (T + "test_train.py::test_each_epoch_covers_every_train_row_once_in_a_new_order",),
    ),
    Mutant(
        "min_snr_weights_not_capped",
        "src/sdlab/diffusion.py",
        "clipped = snr.clamp(max=gamma)",
        "clipped = snr",
        (T + "test_diffusion.py::test_min_snr_weights_cap_the_easy_timesteps_only",),
    ),
    # Evaluation (BENCHMARKS: adherence table, CLIP score, Inception FID)
    Mutant(
        "judge_reads_the_real_images",
        "src/sdlab/judge.py",
        "scores = judged(generated)",
        "scores = judged(real_val)",
        (T + "test_judge.py::test_judge_samples_scores_the_generated_images_against_their_own_rows",),
    ),
    Mutant(
        "judge_rows_misaligned",
        "src/sdlab/judge.py",
        "return {**adherence(images, rows), **accuracy(classifier, images, rows)}",
        "return {**adherence(images, rows), **accuracy(classifier, images, rows[1:] + rows[:1])}",
        (T + "test_judge.py::test_judge_samples_scores_the_generated_images_against_their_own_rows",),
    ),
    Mutant(
        "clip_score_ignores_the_prompts",
        "src/sdlab/evaluate.py",
        "metric.update(to_uint8_nchw(images), prompts)",
        "metric.update(to_uint8_nchw(images), [prompts[0]] * len(prompts))",
        (T + "test_evaluate.py::test_clip_score_matches_the_models_own_similarity_and_reads_each_prompt",),
    ),
    Mutant(
        "clip_score_prompts_misaligned",
        "src/sdlab/evaluate.py",
        "metric.update(to_uint8_nchw(images), prompts)",
        "metric.update(to_uint8_nchw(images), prompts[1:] + prompts[:1])",
        (T + "test_evaluate.py::test_clip_score_matches_the_models_own_similarity_and_reads_each_prompt",),
    ),
    Mutant(
        "inception_weights_not_from_the_file",
        "src/sdlab/evaluate.py",
        "    return NoTrainInceptionV3(\n"
        '        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path\n'
        "    )",
        "    module = NoTrainInceptionV3(\n"
        '        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path\n'
        "    )\n"
        "    [torch.nn.init.normal_(p, std=0.01) for p in module.parameters()]\n"
        "    return module",
        (T + "test_evaluate.py::test_standard_inception_fid_loads_its_weights_from_a_local_file",),
    ),
    Mutant(
        "inception_weights_unpickled_unchecked",
        "src/sdlab/evaluate.py",
        "    check_weights_file(weights_path, sha256)\n    return NoTrainInceptionV3",
        "    return NoTrainInceptionV3",
        (T + "test_evaluate.py::test_inception_weights_are_checked_before_they_are_unpickled",),
    ),
    # Data (README: planted duplicate, stable splits, reasons, fetched once, caption cache)
    Mutant(
        "dedupe_keeps_the_last_copy",
        "src/sdlab/data/dedupe.py",
        "_, first = np.unique(codes, return_index=True)",
        "_, last = np.unique(codes[::-1], return_index=True)\n    first = len(codes) - 1 - last",
        (T + "test_dedupe.py::test_the_planted_duplicate_is_the_one_dropped",),
    ),
    Mutant(
        "split_hash_salted_per_process",
        "src/sdlab/data/dedupe.py",
        'return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64',
        'return int.from_bytes(hashlib.sha1((key + str(hash("salt"))).encode()).digest()[:8], "big") / 2**64',
        (T + "test_dedupe.py::test_split_of_named_keys_is_fixed_across_processes_and_versions",),
    ),
    Mutant(
        "synthetic_draw_depends_on_the_process",
        "src/sdlab/sources/synthetic.py",
        "blob = sample_blob(np.random.default_rng([config.seed, origin]))",
        'blob = sample_blob(np.random.default_rng([config.seed, origin, hash("blob") % 1000]))',
        (T + "test_synthetic.py::test_same_seed_same_bytes_and_keys_in_any_process_and_keys_never_come_from_titles",),
    ),
    Mutant(
        "http_status_not_in_the_reason",
        "src/sdlab/data/fetch.py",
        '(r"HTTP Error (\\d{3})", "http_{0}"),',
        '(r"HTTP Error (\\d{3})", "download_error"),',
        (T + "test_fetch.py::test_every_url_ends_ok_or_failed_with_its_reason",),
    ),
    Mutant(
        "fetch_cache_ignored",
        "src/sdlab/data/fetch.py",
        "new = pc.filter(wanted, pc.invert(pc.is_in(wanted, pending))).to_pylist()",
        "new = wanted.to_pylist()",
        (T + "test_fetch.py::test_each_url_is_fetched_once_across_filter_changes_source_switches_and_image_px",),
    ),
    Mutant(
        "caption_cache_ignored",
        "src/sdlab/caption/qwen_pool.py",
        "todo = [j for j in mine if j.cache_key not in cache]",
        "todo = mine",
        (T + "test_caption_qwen.py::test_cache_hits_on_rerun_and_only_new_images_are_captioned",),
    ),
    Mutant(
        "caption_nodes_split_what_is_missing",  # a later node's split differs: images captioned twice or never
        "src/sdlab/caption/qwen_pool.py",
        "mine = assign_by_shard(jobs, lambda j: j.shard, node_rank, num_nodes)",
        "mine = [j for j in jobs if j.cache_key not in cache][node_rank::num_nodes]",
        (T + "test_caption_qwen.py::test_two_cpu_workers_and_two_nodes_give_the_same_table_as_one",),
    ),
    Mutant(
        "kept_original_caption_not_encoded",  # train.caption_mix would draw the backend's caption twice
        "src/sdlab/encode.py",
        "texts = [originals[keys[i]] or captions[keys[i]] for i in positions]",
        "texts = [captions[keys[i]] for i in positions]",
        (T + "test_encode.py::test_kept_original_captions_are_stored_beside_the_backends_without_touching_a_latent",),
    ),
    # Encode (README: bit-identical latents whatever the worker count; corrupt files redone)
    Mutant(
        "encode_noise_depends_on_the_worker",
        "src/sdlab/encode.py",
        "generator = torch.Generator().manual_seed(seed)",
        "generator = torch.Generator().manual_seed(seed + os.getpid())",
        (T + "test_encode.py::test_worker_count_never_reaches_the_bytes_even_with_random_draws_and_flips",),
    ),
    Mutant(
        "encode_redoes_finished_shards",
        "src/sdlab/encode.py",
        "        if not is_complete(latent_path(out, job.stem), fingerprint, shape=spec.bucket_latent_shape):",
        "        if True:",
        (T + "test_encode.py::test_kill_mid_shard_then_rerun_is_bit_exact_and_skips_finished_shards",),
    ),
    Mutant(
        "stored_checksum_never_verified",
        "src/sdlab/latents.py",
        'return tensors_sha256(load_file(str(path))) == header.get("sha256")',
        "return True",
        (T + "test_encode.py::test_a_corrupt_or_truncated_shard_is_detected_and_encoded_again",),
    ),
    Mutant(
        "nsfw_keeps_the_unsafe",
        "src/sdlab/data/curation.py",
        "drop(score > self.cfg.max_nsfw, ",
        "drop(score < self.cfg.max_nsfw, ",
        (T + "test_near_dupes.py::test_clip_embeddings_scores_and_the_embedding_layer",),
    ),
    Mutant(
        "watermark_keeps_the_marked",
        "src/sdlab/data/curation.py",
        "drop(score > self.cfg.max_watermark, ",
        "drop(score < self.cfg.max_watermark, ",
        (T + "test_near_dupes.py::test_the_watermark_detector_scores_pixels_in_the_embed_pass_and_dedupe_drops_on_it",),
    ),
    Mutant(
        "watermark_reads_the_clear_class",
        "src/sdlab/models/watermark.py",
        "dim=1)[:, 0].cpu()",
        "dim=1)[:, 1].cpu()",
        (T + "test_near_dupes.py::test_the_watermark_detector_scores_pixels_in_the_embed_pass_and_dedupe_drops_on_it",),
    ),
    Mutant(
        "streamed_checksum_skips_the_names",
        "src/sdlab/latents.py",
        "                digest.update(name.encode())\n                rows = 0",
        "                rows = 0",
        (T + "test_encode.py::test_a_file_written_block_by_block_matches_save_checked",),
    ),
    # sdlab generate (README: the snippet and the command line draw the same image; bad numbers are errors)
    Mutant(
        "cli_default_sampler_differs_from_the_readme",
        "src/sdlab/drawing_rules.py",
        'DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "dpm_solver_multistep", 20, 5.0',
        'DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "ddim", 20, 5.0',
        (T + "test_evaluate.py::test_the_readme_snippet_and_the_command_line_draw_the_same_image",),
    ),
    Mutant(
        "cli_accepts_zero_steps",
        "src/sdlab/cli.py",
        "    if args.steps < 1:",
        "    if args.steps < 0:",
        (T + "test_evaluate.py::test_bad_generate_options_are_one_line_errors_and_write_nothing",),
    ),
    Mutant(
        "cli_help_without_defaults",
        "src/sdlab/cli.py",
        'give the same pixels.",\n        formatter_class=argparse.ArgumentDefaultsHelpFormatter,',
        'give the same pixels.",\n        formatter_class=argparse.HelpFormatter,',
        (T + "test_evaluate.py::test_generate_help_describes_every_option_with_its_default",),
    ),
    Mutant(
        "cli_missing_pipeline_without_a_hint",
        "src/sdlab/cli.py",
        '    if Path(model).resolve() == Path("models/pipeline").resolve():',
        "    if False:",
        (T + "test_evaluate.py::test_generate_command_names_a_folder_that_is_not_a_pipeline",),
    ),
    # One home for every value (issue 16)
    Mutant(
        "params_yaml_lacks_a_value_a_stage_reads",
        "params.yaml",
        "  weight_decay: 0.01\n",
        "",
        (T + "test_config.py::test_params_yaml_names_every_value_with_the_schemas_default",),
    ),
    Mutant(
        "schema_default_differs_from_params_yaml",
        "src/sdlab/config.py",
        "    max_steps: int = Field(600, gt=0)",
        "    max_steps: int = Field(400, gt=0)",
        (T + "test_config.py::test_params_yaml_names_every_value_with_the_schemas_default",),
    ),
    # DVC: every stage reruns when code it imports changes
    Mutant(
        "a_stage_dependency_dropped",
        "dvc.yaml",
        "      - src/sdlab/stream.py\n",
        "",
        (T + "test_dvc_deps.py::test_every_stage_depends_on_everything_its_entry_point_imports",),
    ),
    Mutant(
        "unfinished_batch_fetched_again_as_new",
        "src/sdlab/data/fetch.py",
        "pc.is_in(wanted, pending)",
        'pc.is_in(wanted, known["url"])',
        (T + "test_fetch.py::test_killed_download_resumes_without_fetching_finished_shards_again",),
    ),
    Mutant(
        "kohya_lora_keys_without_their_prefix",
        "src/sdlab/models/pipeline.py",
        '{f"unet.{name}": tensor for name, tensor in adapters.items()}',
        "dict(adapters)",
        (T + "test_train_scale.py::test_lora_export_merges_and_the_saved_adapters_load_with_load_lora_weights",),
    ),
    Mutant(
        "cli_height_ignored",
        "src/sdlab/cli.py",
        "height=args.height or trained,",
        "height=trained,",
        (T + "test_evaluate.py::test_generate_draws_the_height_it_is_asked_for",),
    ),
    Mutant(
        "single_file_resnets_miscounted",
        "src/sdlab/models/single_file.py",
        'f"input_blocks.{(layers + 1) * i + j + 1}.0."',
        'f"input_blocks.{layers * i + j + 1}.0."',
        (T + "test_single_file.py::test_the_ldm_layout_is_what_diffusers_converts_back_to_the_same_weights",),
    ),
    Mutant(  # issue 32: each property the single-file clients assume is checked
        "single_file_ignores_attention_heads",
        "src/sdlab/models/single_file.py",
        '    "attention_head_dim": 8,',
        "",
        (T + "test_single_file.py::test_the_rule_refuses_what_a_single_file_client_would_misread[four_heads]",),
    ),
    Mutant(
        "single_file_ignores_the_vae_scale",
        "src/sdlab/models/single_file.py",
        '    "scaling_factor": 0.18215,',
        "",
        (T + "test_single_file.py::test_the_rule_refuses_what_a_single_file_client_would_misread[vae_scale]",),
    ),
    Mutant(
        "single_file_ignores_the_objective",
        "src/sdlab/models/single_file.py",
        '    "prediction_type": "epsilon",',
        "",
        (T + "test_single_file.py::test_the_rule_refuses_what_a_single_file_client_would_misread[v_prediction]",),
    ),
    Mutant(  # issue 31: a circle closed by a top-level import is caught by the graph test
        "serve_imports_from_cli_again",
        "src/sdlab/serve.py",
        "from sdlab.drawing_rules import",
        "from sdlab.cli import fits\nfrom sdlab.drawing_rules import",
        (T + "test_import_graph.py::test_the_modules_import_each_other_without_circles",),
    ),
    Mutant(
        "playground_ignores_the_scheduler",
        "src/sdlab/serve.py",
        'use_scheduler(self.pipeline, settings["scheduler"])',
        'use_scheduler(self.pipeline, self.defaults["scheduler"])',
        (T + "test_playground.py::test_the_page_draws_what_sdlab_generate_draws_with_the_command_it_shows",),
    ),
    Mutant(
        "attribute_judge_allowed_for_any_source",
        "src/sdlab/config.py",
        'if judge.kind == "blob_attributes" and self.scrape.source != "synthetic":',
        "if False:",
        (T + "test_config.py::test_the_attribute_judge_is_asked_for_only_where_the_attributes_exist",),
    ),
    Mutant(
        "spark_cluster_ignored",
        "src/sdlab/data/engines.py",
        '.master(master or f"local[{processes}]")',
        '.master(f"local[{processes}]")',
        (T + "test_engines.py::test_the_spark_session_is_built_on_the_named_master_else_on_loopback",),
    ),
    Mutant(
        "every_machine_exports",
        "src/sdlab/train.py",
        "    if accelerator.is_main_process:\n        resuming = prepare_run",
        "    if accelerator.is_local_main_process:\n        resuming = prepare_run",
        (T + "test_train_scale.py::test_two_machines_train_as_one_machine_of_two_and_resume_after_a_kill",),
    ),
    # The model card (issue 18): its how-to and counts are the run's own
    Mutant(
        "card_command_with_the_cli_default_steps",
        "src/sdlab/card.py",
        'f"  --seed 0 --steps {steps} --guidance',
        'f"  --seed 0 --steps 20 --guidance',
        (T + "test_card.py::test_the_how_to_carries_the_prompt_and_evaluates_settings_exactly",),
    ),
    Mutant(
        "card_counts_dedupe_input_as_kept",
        "src/sdlab/card.py",
        """                f"{d['kept']:,}",""",
        """                f"{d['input']:,}",""",
        (T + "test_card.py::test_counts_reasons_and_metrics_are_the_runs_own",),
    ),
    # Profiles (issue 16): deltas run as DVC experiments; params read as DVC writes them
    Mutant(
        "params_read_as_yaml_1_1",
        "src/sdlab/config.py",
        'return YAML(typ="safe", pure=True).load(path.read_text())',
        'return __import__("yaml").safe_load(path.read_text())',
        (T + "test_config.py::test_params_rewritten_by_dvc_exp_run_read_the_same",),
    ),
    Mutant(
        "profile_run_in_the_workspace",
        "src/sdlab/cli.py",
        'where = [] if args.workspace else ["--temp"]',
        "where = []",
        (T + "test_profiles.py::test_a_profile_runs_as_an_experiment_outside_the_workspace",),
    ),
    # Real artwork (issue 27): the split, the label judges, retrieval
    Mutant(
        "split_by_key_not_by_pair",
        "src/sdlab/data/dedupe.py",
        "split_by=table[self.split_column],",
        'split_by=table["key"],',
        (T + "test_dedupe.py::test_rows_sharing_a_split_value_share_a_split_and_held_out_groups_go_whole",),
    ),
    Mutant(
        "unseen_concepts_not_held_out",
        "src/sdlab/data/dedupe.py",
        "unseen = hashed_below(unseen_by, unseen_fraction, salt=UNSEEN_SALT)",
        "unseen = np.zeros(len(split_by), bool)",
        (T + "test_emoji_sets.py::test_the_split_holds_out_concept_style_pairs_and_whole_concepts",),
    ),
    Mutant(
        "label_judge_reads_the_real_images",
        "src/sdlab/label_judge.py",
        '"adherence": read(generated[index]),',
        '"adherence": read(real_val[index]),',
        (T + "test_label_judge.py::test_images_judged_against_other_rows_score_near_chance",),
    ),
    Mutant(
        "retrieval_lets_a_real_image_find_itself",
        "src/sdlab/label_judge.py",
        "    if self_index is not None:\n        similarity[",
        "    if False:\n        similarity[",
        (T + "test_label_judge.py::test_retrieval_counts_a_hit_only_for_the_querys_own_concept",),
    ),
    Mutant(
        "judge_pool_teaches_the_concept_head",
        "src/sdlab/label_judge.py",
        "taught = [c for c in columns if c in pool_columns]",
        "taught = list(columns)",
        (T + "test_label_judge.py::test_the_judge_pool_teaches_the_label_heads_and_never_the_concept_head",),
    ),
    Mutant(
        "pool_judge_shares_its_trunk_with_category",  # the one-trunk judge that read category 0.77
        "src/sdlab/label_judge.py",
        "rest = [c for c in columns if c not in from_pool]",
        "rest = list(columns)",
        (T + "test_label_judge.py::test_the_columns_a_pool_teaches_get_a_judge_of_their_own",),
    ),
    Mutant(
        "noto_counted_as_a_style_of_its_own",  # Noto's font and Google's package are one design
        "src/sdlab/sources/emoji_sets.py",
        '"style": style_of(vendor),',
        '"style": vendor,',
        (T + "test_emoji_sets.py::test_the_noto_font_is_one_more_vendor_drawn_in_googles_style",),
    ),
    Mutant(
        "no_headline_without_held_out_pairs",  # the Noto profile: every val concept unseen
        "src/sdlab/label_judge.py",
        'headline, group = (pairs, "held_out_pairs") if pairs else (unseen, "unseen_concepts")',
        'headline, group = pairs, "held_out_pairs"',
        (T + "test_label_judge.py::test_with_no_val_concept_trained_on_the_headline_is_the_unseen_concepts",),
    ),
    # Aspect buckets (issue 28)
    Mutant(
        "bucket_fit_ignored_at_download",
        "src/sdlab/data/packing.py",
        "            fit=cfg.fit,",
        '            fit="pad",',
        (T + "test_buckets.py::test_bucketed_photos_are_stored_at_their_bucket_with_no_white_bar",),
    ),
    Mutant(
        "batch_mixes_rows_of_two_buckets",  # one bucket's latents with another's captions
        "src/sdlab/latents.py",
        "{name: array[places[picked]] for name, array in text.items()}",
        "{name: array[picked] for name, array in text.items()}",
        (T + "test_buckets.py::test_every_batch_is_one_bucket_and_every_image_is_seen_once_per_pass",),
    ),
    # Curation (issue 29): near-duplicates named by the rule, dropped, counted
    Mutant(
        "near_duplicate_led_by_a_removed_row",  # the chain rule: only kept rows lead
        "src/sdlab/data/near_dupes.py",
        "earlier = np.flatnonzero(close[:j, j] & stays[:j])",
        "earlier = np.flatnonzero(close[:j, j])",
        (T + "test_near_dupes.py::test_leaders_keep_the_first_of_every_group_whatever_the_block_size",),
    ),
    Mutant(
        "near_duplicates_found_but_kept",
        "src/sdlab/data/curation.py",
        "            survives[gone] = False",
        "            survives[gone] = survives[gone]",
        (T + "test_near_dupes.py::test_planted_near_copies_of_real_artwork_are_removed_naming_their_original",),
    ),
    Mutant(
        "one_probe_per_row",  # the second cluster a row joins is what finds pairs across a border
        "src/sdlab/data/near_dupes.py",
        "    probes = min(rule.probes, k)",
        "    probes = 1",
        (T + "test_near_dupes.py::test_the_clustered_search_finds_planted_copies_whatever_the_parts_and_spills",),
    ),
)


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """The working tree's files (tracked and not ignored), copied once."""
    root = tmp_path_factory.mktemp("pristine") / "repo"
    for name in repository_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    return root


def mutant_env(copy: Path) -> dict[str, str]:
    # the copy holds tracked files only: the emoji packages `make install` fetched are read from
    # here, and the fixtures `make test` trained (tests/support/fixture_cache.py: keyed by their
    # training code, so a mutant of that code trains its own)
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(copy / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        SDLAB_EMOJI_TARBALLS=str(REPO / ".cache" / "emoji-tarballs"),
        SDLAB_TEST_FIXTURES=str(REPO / ".cache" / "test-fixtures"),
    )


# The libraries every mutant's tests import (torch, diffusers, transformers, ...) take ~6 s per
# interpreter here, as long as many mutants' tests run. One interpreter per pytest worker imports
# them once, never sdlab, and forks a child per mutant: the child puts the broken copy first on
# sys.path, imports sdlab from it (checked) and runs the mutant's tests with pytest.main. Nothing
# of the copy is in the parent, so every child imports the mutant's code afresh.
PRELOADED = ("numpy", "pyarrow", "PIL.Image", "torch", "transformers", "accelerate", "peft", "pytest")
ZYGOTE = r"""
import importlib, json, os, sys, threading
for name in sys.argv[1:]:
    importlib.import_module(name)
from diffusers import AutoencoderKL, UNet2DConditionModel  # diffusers imports its models lazily
assert not any(name == "sdlab" or name.startswith("sdlab.") for name in sys.modules), "sdlab in the zygote"
print(json.dumps({"ready": threading.active_count()}), flush=True)
for line in sys.stdin:
    ask = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(ask["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(ask["cwd"])
        os.environ.clear()
        os.environ.update(ask["env"])
        sys.path[:0] = [ask["src"], ask["tests"]]
        code = 3
        try:
            import sdlab
            if not sdlab.__file__.startswith(ask["src"]):
                print("sdlab imported from", sdlab.__file__, "not the broken copy", flush=True)
            else:
                import pytest
                code = int(pytest.main(ask["args"]))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"code": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
"""


class Zygote:
    """A Python process that has imported the heavy libraries and forks a child per mutant."""

    def __init__(self, workdir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, *PRELOADED],
            cwd=workdir,  # nothing importable here: sdlab comes from each copy
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.answer(timeout_s=300)
        assert "ready" in ready, ready

    def answer(self, timeout_s: float) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise TimeoutError(f"the mutant zygote gave no answer in {timeout_s:.0f} s (exit {self.proc.poll()})")
        return json.loads(line)

    def pytest(self, copy: Path, args: list[str], log: Path, timeout_s: float = 900) -> int:
        """pytest ARGS in a fork whose sdlab is the copy's; its output in `log`; the exit code."""
        ask = {
            "cwd": str(copy),
            "src": str(copy / "src"),
            "tests": str(copy / "tests"),
            "env": mutant_env(copy),
            "args": args,
            "log": str(log),
        }
        self.proc.stdin.write(json.dumps(ask) + "\n")
        self.proc.stdin.flush()
        pid = self.answer(timeout_s=60)["pid"]
        try:
            return self.answer(timeout_s)["code"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self.answer(timeout_s=60)
            raise

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    made = Zygote(tmp_path_factory.mktemp("zygote"))
    yield made
    made.close()


def test_every_mutant_names_its_breakage_once_and_existing_tests():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    for mutant in MUTANTS:
        assert (REPO / mutant.path).read_text().count(mutant.old) == 1, mutant.name
        for test in mutant.tests:
            path, _, function = test.partition("::")
            assert f"def {function.split('[')[0]}(" in (REPO / path).read_text(), (mutant.name, test)


@pytest.mark.mutants
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_the_matching_test_fails_against_the_breakage(mutant: Mutant, pristine: Path, zygote, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(pristine, copy)
    target = copy / mutant.path
    text = target.read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: the code it breaks changed; update the mutant"
    target.write_text(text.replace(mutant.old, mutant.new))
    log = tmp_path / "pytest.log"
    code = zygote.pytest(copy, ["-x", "-q", "-p", "no:cacheprovider", *mutant.tests], log)
    output = log.read_text()
    assert "not the broken copy" not in output, output[-2000:]  # the broken copy is what was imported
    assert code == 1, (  # 1: tests ran and failed (not a collection or usage error)
        f"{mutant.name}: {' '.join(mutant.tests)} exited {code} against the breakage\n" + output[-5000:]
    )
