"""The paper's analyses on top of the stage outputs: layer/pixel information, profiles, generalisation."""
