"""Observer-study mode: registered clinicians annotate study cases, timed by the server, scored
against locked ground truth and summarised as the paper's Table 3. No Gradio imports here."""
