"""The file MLflow runs to load a pgkit policy model ("models from code"): the model is this code, not a pickle.

``pgkit.mlflow_model.log_policy`` names this file as the ``python_model``; MLflow copies it into the model and runs
it on ``mlflow.pyfunc.load_model``. Not meant to be imported otherwise.
"""

import mlflow

from pgkit.mlflow_model import PolicyModel

mlflow.models.set_model(PolicyModel())
