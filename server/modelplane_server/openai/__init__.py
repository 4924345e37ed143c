"""The OpenAI API: the wire models (`protocol`) and the endpoints' logic between them and the
engines."""
