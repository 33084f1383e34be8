"""dlio_benchmark.utils.config (stand-in): ConfigArguments, the singleton holding the run's
configuration. Storage backends read optional attributes (storage_options, endpoint_uris, ...)
with getattr; a test sets them on get_instance()."""


class ConfigArguments:
    __instance = None

    def __init__(self):
        self.framework = None
        self.storage_options = {}
        self.endpoint_uris = None
        self.load_balance_strategy = "round_robin"
        self.use_mpi_endpoint_distribution = False

    @staticmethod
    def get_instance():
        if ConfigArguments.__instance is None:
            ConfigArguments.__instance = ConfigArguments()
        return ConfigArguments.__instance

    @staticmethod
    def reset():
        ConfigArguments.__instance = None
