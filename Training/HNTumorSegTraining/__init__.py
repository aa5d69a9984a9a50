"""HNTumorSegTraining: from HECKTOR data to a model file that HNTumorSegLib loads.

Preprocessing is :func:`HNTumorSegLib.pipeline.preprocess.preprocess` itself, so training and inference
see identical inputs. The command is ``hntumorseg-train``.
"""
