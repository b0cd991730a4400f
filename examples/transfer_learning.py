"""Fine-tune MaxViT on your images with model.fit (same as `keras-maxvit fit`).

Offline, on the generated `maxvit_shapes` dataset (random init, small input):

    python examples/transfer_learning.py --weights none --image-size 64 --epochs 8

With internet, pretrained weights on TF Flowers:

    python examples/transfer_learning.py --dataset tf_flowers --weights imagenet

`python examples/transfer_learning.py --help` lists every option.
"""

from keras_maxvit.training import main

if __name__ == "__main__":
    main()
