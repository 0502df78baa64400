"""What each MLflow flavor publishes: one module per flavor, each turning a resolved MLflow model
and the settings into a publish plan. The flavor is chosen here, once.
"""
