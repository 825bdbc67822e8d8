"""streamfan's producer: takes generation jobs from Redis and publishes each answer chunk by chunk."""
