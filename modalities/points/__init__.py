"""Point-cloud masked modelling (Point-MAE): patches are kNN groups around farthest-point centres."""
