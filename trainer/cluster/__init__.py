"""Where the job runs: the platform and the cluster it is part of.

Owns: SageMaker's and Vertex AI's layouts (`platforms`), TF_CONFIG, Vertex's CLUSTER_SPEC and the
Indexed Job's variables (`specs`), waiting for peers (`peers`), and the tf.distribute strategy,
devices and precision (`distribution`).

May import: `trainer.errors`, `logs`, `options`; never the recipe modules above it. Only
`distribution` imports TensorFlow, at the top.
"""
