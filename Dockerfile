# GPU image: a CUDA PyTorch base plus this project's requirements.
#   docker build -t pfgmpp .
#   docker run --gpus all --rm -it -u $(id -u):$(id -g) -v $PWD:/workspace pfgmpp python train.py --help
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DNNLIB_CACHE_DIR=/workspace/.cache/dnnlib

WORKDIR /workspace
COPY requirements.txt /tmp/requirements.txt
# torch is already in the base image at the pinned version; pip keeps it.
RUN pip install --no-cache-dir -r /tmp/requirements.txt
