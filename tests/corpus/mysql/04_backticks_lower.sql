select `u`.`id`,`u`.`email`, count(`o`.`id`) as orders
from `users` `u` left join `orders` `o` on `o`.`customer_id`=`u`.`id`
group by `u`.`id`, `u`.`email`
