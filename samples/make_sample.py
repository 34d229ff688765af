"""Rebuild samples/bbb_160x90.mp4: 48 frames of Big Buck Bunny downscaled 8x (MATLAB bicubic), with audio.

    python samples/make_sample.py path/to/bigbuckbunny.mp4
"""

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vsrx.evaluate.bicubic import imresize

FIRST, COUNT, SCALE = 60, 48, 1 / 8


def main(src: str) -> None:
    out_path = Path(__file__).with_name("bbb_160x90.mp4")
    with av.open(src) as inp, av.open(str(out_path), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = 160, 90, "yuv420p"
        vout.options = {"crf": "12", "preset": "slow"}
        aout = out.add_stream("aac", rate=ain.codec_context.sample_rate)
        t0 = t1 = None
        for frame in inp.decode(vin):
            index = round(frame.time * float(vin.average_rate))
            if index < FIRST:
                continue
            if index >= FIRST + COUNT:
                t1 = frame.time
                break
            t0 = frame.time if t0 is None else t0
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).double()
            small = imresize(rgb, SCALE).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
            new = av.VideoFrame.from_ndarray(np.ascontiguousarray(small), format="rgb24")
            new.pts, new.time_base = index - FIRST, Fraction(1) / vin.average_rate
            out.mux(vout.encode(new))
        out.mux(vout.encode(None))
        inp.seek(0)
        for frame in inp.decode(ain):
            if frame.time is None or frame.time < t0:
                continue
            if frame.time >= t1:
                break
            frame.pts = None
            out.mux(aout.encode(frame))
        out.mux(aout.encode(None))


if __name__ == "__main__":
    main(sys.argv[1])
