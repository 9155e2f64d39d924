"""The panes of the clusterlab UI: control, charts, cluster table and engine log."""
