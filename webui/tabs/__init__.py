"""One module per tab of the page: each builds its components (``create_tab``), wires its own events
(``wire_tab``) and offers what other tabs may send it (``receive_*``); ``webui.ui`` lays the tabs out."""
