-- The request generator and result reporter for every wrk run of `make bench`.
--
-- bench/load.py prepends a table `bench` describing the load:
--   bench.method, bench.path, bench.headers      sent on every request
--   bench.rotate   = {header, file, prefix}      header value cycles through the lines
--                                                of `file` (e.g. pre-minted tokens),
--                                                each thread starting at its own offset;
--                                                header ":path": the request path does
--   bench.distinct = {header, prefix, limit}     header value unique per request
--                                                (prefix .. thread .. "-" .. counter);
--                                                with `limit`, each thread stops after
--                                                its share and leaves a file in
--                                                bench.marks (wrk's main thread sleeps
--                                                for all of -d: load.py interrupts it
--                                                once every thread is done)
--   bench.threads                                wrk's -t
-- and reads one line `BENCH-RESULT {json}` that done() prints.
--
-- Without rotate/distinct no request() is defined, so wrk sends one pre-built request
-- (its cheapest mode): the load generator costs the same in every static scenario.

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local values = nil
local counter = 0
local per_thread_limit = nil

function init(args)
   wrk.method = bench.method
   wrk.path = bench.path
   for name, value in pairs(bench.headers) do
      wrk.headers[name] = value
   end
   if bench.rotate then
      values = {}
      for line in io.lines(bench.rotate.file) do
         if #line > 0 then
            values[#values + 1] = bench.rotate.prefix .. line
         end
      end
      if #values == 0 then
         error("no values in " .. bench.rotate.file)
      end
      -- Threads start apart so that they do not send the same value at the same time.
      counter = thread_index * math.floor(#values / bench.threads)
   end
   if bench.distinct and bench.distinct.limit then
      per_thread_limit = math.ceil(bench.distinct.limit / bench.threads)
   end
end

if bench.rotate or bench.distinct then
   local sent = 0
   function request()
      sent = sent + 1
      if values then
         counter = counter + 1
         local value = values[(counter % #values) + 1]
         if bench.rotate.header == ":path" then
            wrk.path = value
         else
            wrk.headers[bench.rotate.header] = value
         end
      end
      if bench.distinct then
         wrk.headers[bench.distinct.header] =
            string.format("%s%d-%d", bench.distinct.prefix, thread_index, sent)
      end
      return wrk.format()
   end
   if bench.distinct and bench.distinct.limit then
      local answered = 0
      function response(status, headers, body)
         answered = answered + 1
         if answered == per_thread_limit then
            wrk.thread:stop()
            io.open(bench.marks .. "/done-" .. thread_index, "w"):close()
         end
      end
   end
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'BENCH-RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
      '"latency_p50_us": %d, "latency_p99_us": %d, "latency_max_us": %d}\n',
      summary.requests, summary.duration, errors.status, errors.connect, errors.read,
      errors.write, errors.timeout, latency:percentile(50), latency:percentile(99),
      latency.max))
end
