"""The model side: the LLM gateway's pieces, the scripted model, prices."""
