"""The report: the HTML page, thumbnails, the flow figure and the dataset card."""
