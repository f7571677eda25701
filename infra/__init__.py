"""Settings, typed configuration and the artifact store: the layer every other package stands on."""
