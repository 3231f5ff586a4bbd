"""DVC stage `train`: the denoiser (UNet or Transformer) on latents streamed from disk; checkpoints
persist, the pipeline is exported. The run itself, top to bottom, is `sdlab.train.run`.

With `train.num_processes > 1` (or `train.accelerate_config`) it re-runs itself under
`accelerate launch`; every rank then streams only its share of the latent shards.
"""

import sys
from pathlib import Path

from sdlab.launch import relaunch_if_needed
from sdlab.stage import parse_args, stage


@stage("train")
def main(args, params):
    relaunch_if_needed(params.train, __file__, sys.argv[1:])
    # after the relaunch: the process that only starts `accelerate launch` never imports the
    # training stack (diffusers, transformers, peft: ~5 s of imports on a 2-core machine)
    from sdlab.train import RunPaths, run

    paths = RunPaths(
        *(Path(getattr(args, name)) for name in ("latents", "vae", "checkpoints", "live", "out", "report"))
    )
    run(params.train, paths)


if __name__ == "__main__":
    main(parse_args(__doc__, "latents", "vae", "checkpoints", "live", "out", "report"))
