"""Fine-tune MaxViT on your images with model.fit (same as `keras-maxvit fit`).

Offline, on the generated `maxvit_shapes` dataset (a small MaxViT from random
weights, small input; about 3 minutes on 2 CPU cores, >= 90% validation accuracy):

    python examples/transfer_learning.py --model nano --weights none --image-size 64 \
        --head-epochs 0 --epochs 15 --lr 1e-3 --drop-path-rate 0

With internet, pretrained weights on TF Flowers:

    python examples/transfer_learning.py --dataset tf_flowers --weights imagenet

`python examples/transfer_learning.py --help` lists every option.
"""

from keras_maxvit.training import main

if __name__ == "__main__":
    main()
