"""The "document" modality: how a document travels from a request to the model."""

MODALITY = "document"
