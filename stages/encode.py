"""DVC stage `encode`: VAE latents of every kept image + text hidden states of each caption."""

from pathlib import Path

import pyarrow as pa

from sdlab.encode import caption_vocabulary, encode_latents, encode_texts, save_safetensors_atomic
from sdlab.io import read_table, reset_dir, write_json, write_table
from sdlab.models.text_encoder import PACKAGED_MINILM, load_text_encoder
from sdlab.models.vae import load_pretrained_vae
from sdlab.stage import parse_args, stage


@stage("encode")
def main(args, params):
    index = read_table(Path(args.index))
    captions = dict(zip(*read_table(Path(args.captions)).select(["key", "caption"]).to_pydict().values()))
    rows = [{**row, "caption": captions[row["key"]]} for row in index.to_pylist()]
    out = reset_dir(args.out)
    vae = load_pretrained_vae(args.vae).eval()
    scaling = float(vae.config.scaling_factor)
    latent_rows = encode_latents(vae, scaling, Path(args.shards), rows, out, params.encode.batch_size)

    vocabulary = caption_vocabulary([r["caption"] for r in latent_rows])
    caption_id = {caption: i for i, caption in enumerate(vocabulary)}
    tokenizer, text_encoder = load_text_encoder(params.text_encoder.pretrained, params.text_encoder.max_length)
    hidden = encode_texts(tokenizer, text_encoder, vocabulary, params.encode.batch_size)
    save_safetensors_atomic(out / "text.safetensors", {"hidden": hidden})
    write_table(out / "captions.parquet", pa.table({"caption_id": list(range(len(vocabulary))), "caption": vocabulary}))
    for row in latent_rows:
        row["caption_id"] = caption_id[row["caption"]]
    write_table(out / "index.parquet", pa.Table.from_pylist(latent_rows))
    latent_px = params.download.image_px // 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = [vae.config.latent_channels, latent_px, latent_px]
    meta = {"vae": str(args.vae), "scaling_factor": scaling, "latent_shape": latent_shape,
            "dtype": "float16", "stored": "scaled posterior mean and std",
            "text_encoder": params.text_encoder.pretrained,  # null: the packaged MiniLM
            "text_encoder_name": params.text_encoder.pretrained or PACKAGED_MINILM,
            "max_length": params.text_encoder.max_length, "hidden_shape": list(hidden.shape[1:]),
            "images": len(latent_rows), "captions": len(vocabulary)}
    write_json(out / "meta.json", meta)
    write_json(Path(args.report) / "stats.json", {"images": len(latent_rows), "captions": len(vocabulary)})
    print(f"encode: {len(latent_rows)} latents {latent_shape}, {len(vocabulary)} distinct captions")


if __name__ == "__main__":
    main(parse_args(__doc__, "index", "captions", "shards", "vae", "out", "report"))
