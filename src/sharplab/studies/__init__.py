"""Study files shipped with the package (used by ``sharplab demo``); copy one to start your own."""
