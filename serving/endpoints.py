"""The built-in families' friendly endpoints: their routes and families, in one light module (the
BentoML service's decorators, the API document, the Ray Serve router and the benchmarks read them)."""

CLASSIFY_IMAGE, CLASSIFY_TEXT, RECOMMEND = "/v1/classify_image", "/v1/classify_text", "/v1/recommend"
FAMILIES = {CLASSIFY_IMAGE: "cnn", CLASSIFY_TEXT: "rnn", RECOMMEND: "recsys"}  # route -> family
